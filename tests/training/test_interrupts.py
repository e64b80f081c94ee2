"""Ctrl-C at any moment, then --resume, many times over: the run ends bit-identical to one that was never
interrupted (a real subprocess, real SIGINTs at random moments)."""

from __future__ import annotations

import json
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
    "--layers",
    "2",
    "--hidden",
    "32",
    "--dropout",
    "0.1",
    "--batch-size",
    "8",
    "--bptt",
    "16",
    "--lr",
    "1e-2",
    "--warmup-steps",
    "20",
    "--preview-chars",
    "20",
    "--eval-every",
    "400",
    "--checkpoint-every",
    "300",
    "--max-steps",
    "1500",
    "--no-progress",
]


def command(corpus: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "chargen", "train", str(corpus), "--out", str(run), *ARGS, *extra]


def last(run: Path) -> dict:
    return {
        f"{name}/{k}": v
        for name in ("model", "optimizer", "state")
        for k, v in load_file(str(run / "last" / f"{name}.safetensors")).items()
    }


@pytest.mark.slow
def test_random_sigints_then_resume_end_bit_identical(tmp_path):
    rng = random.Random(20261123)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "its", "home"]
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words) for _ in range(8)) for _ in range(3000)) + "\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    straight = subprocess.run(command(corpus, tmp_path / "straight"), env=env, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr

    run, steps_at_stop = tmp_path / "run", []
    for attempt in range(10):
        extra = ["--resume"] if (run / "last").is_dir() else []
        p = subprocess.Popen(
            command(corpus, run, *extra), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        if attempt < 8:  # then one last start runs to the end
            if rng.random() < 0.25:
                time.sleep(rng.uniform(0.0, 2.5))  # while Python and chargen start up
            else:
                started = _metrics_size(run)
                deadline = time.monotonic() + 60
                while _metrics_size(run) <= started and p.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.05)  # until this start is training
                time.sleep(rng.uniform(0.0, 1.5))  # then anywhere: a step, an evaluation, a checkpoint
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        _out, err = p.communicate(timeout=300)
        # 130 from chargen; -SIGINT when the signal lands while Python itself is still starting or exiting
        assert p.returncode in (0, 130, -signal.SIGINT), err
        assert "Traceback" not in err, err
        if "checkpoint saved" in err:
            steps_at_stop.append(int(err.split("interrupted at step ")[1].split(";")[0]))
        if p.returncode == 0 or _finished(run):  # (a signal may land after the last checkpoint, as it exits)
            break
    assert _finished(run), err
    assert len(steps_at_stop) >= 2, steps_at_stop  # several stops inside training
    a, b = last(tmp_path / "straight"), last(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _finished(run: Path) -> bool:
    try:
        info = json.loads((run / "last" / "trainer.json").read_text())
    except (OSError, ValueError):
        return False
    return info.get("stopped") == "budget"


def _metrics_size(run: Path) -> int:
    try:
        return (run / "metrics.jsonl").stat().st_size
    except FileNotFoundError:
        return -1


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_kill_while_an_overwrite_prepares_leaves_the_old_run_whole(tmp_path, sig):
    """SIGTERM and SIGHUP clean up as Ctrl-C does: the new run's stage goes, the old run stays as it was."""
    small = tmp_path / "small.txt"
    small.write_text("the cat sat on the mat\n" * 400)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = tmp_path / "run"
    made = subprocess.run(command(small, run, "--max-steps", "3"), env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    big = tmp_path / "big.txt"  # long enough to prepare for a while
    big.write_text("".join(f"line {i} of a corpus that takes a moment to prepare\n" for i in range(600_000)))
    p = subprocess.Popen(
        command(big, run, "--overwrite"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while not list(run.glob(".chargen-new-*")) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert p.poll() is None, p.communicate()[1]  # still preparing
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "chargen train: interrupted"
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert not any(name.startswith(".") for name in os.listdir(run))  # no stage, no lock file


def test_a_ctrl_c_during_the_heavy_imports_is_delivered_after_them():
    from chargen.signals import ctrl_c_deferred

    reached = []
    with pytest.raises(KeyboardInterrupt), ctrl_c_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the signal is handled here, and held
        reached.append("end of block")
    assert reached == ["end of block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
