"""Issue 31, item 3: `kill -9` at random points of a run that checkpoints every few steps, so that kills
land inside checkpoint writes (the best weights, last/ and its swap) as well as between them; each start
resumes from what the last one left, and the end is the same bits as a run never killed."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO

ARGS = [
    "--layers", "1", "--hidden", "64", "--batch-size", "8", "--bptt", "16", "--lr", "1e-2",
    "--warmup-steps", "5", "--preview-chars", "0", "--eval-every", "7", "--checkpoint-every", "3",
    "--max-steps", "400", "--no-progress",
]  # fmt: skip


def command(corpus: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "chargen", "train", str(corpus), "--out", str(run), *ARGS, *extra]


def weights(run: Path) -> dict[str, torch.Tensor]:
    found = {f"best/{k}": v for k, v in load_file(str(run / "model.safetensors")).items()}
    for name in ("model", "optimizer", "state"):
        found.update({f"{name}/{k}": v for k, v in load_file(str(run / "last" / f"{name}.safetensors")).items()})
    return found


def steps_done(run: Path) -> int:
    try:
        return sum(1 for line in (run / "metrics.jsonl").read_text(errors="replace").splitlines() if '"loss"' in line)
    except OSError:
        return -1


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_ends_bit_identical(tmp_path):
    rng = random.Random(20261206)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "its", "home"]
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words) for _ in range(8)) for _ in range(3000)) + "\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    straight = subprocess.run(command(corpus, tmp_path / "straight"), env=env, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr

    run, kills = tmp_path / "run", 0
    for _attempt in range(12):
        if (run / "last").is_dir() or (run / "last.old").is_dir():
            extra = ["--resume"]
        else:  # killed before its first checkpoint (a loaded machine starts slowly): start it again
            extra = ["--overwrite"] if run.is_dir() and any(p.name != ".chargen.lock" for p in run.iterdir()) else []
        p = subprocess.Popen(command(corpus, run, *extra), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if kills < 6:
            before, deadline = steps_done(run), time.monotonic() + 60
            while steps_done(run) <= before and p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)  # until this start trains
            time.sleep(rng.uniform(0.0, 0.8))  # then anywhere: a step, an evaluation, a checkpoint write
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                kills += 1
        _out, err = p.communicate(timeout=300)
        if p.returncode == 0:
            break
        assert p.returncode == -signal.SIGKILL, err.decode()
    assert p.returncode == 0 and kills >= 4
    a, b = weights(tmp_path / "straight"), weights(run)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    left = [p.name for p in run.iterdir() if p.name.startswith(".") and p.name != ".chargen.lock"]
    assert left == [] and not (run / "last.old").exists()
