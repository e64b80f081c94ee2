"""A run folder in use is locked: a second train, resume or overwrite is refused with one line that
names the process, and a holder killed with kill -9 never locks the next run out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chargen import ChargenError, Sampler
from chargen.runs.folder import LOCK_FILE, RunLock
from conftest import REPO

SMALL = [
    "--layers",
    "1",
    "--hidden",
    "16",
    "--batch-size",
    "4",
    "--bptt",
    "8",
    "--preview-chars",
    "0",
    "--warmup-steps",
    "0",
    "--no-progress",
]


@pytest.fixture
def corpus(tmp_path) -> Path:
    p = tmp_path / "c.txt"
    p.write_text("the quick brown fox jumps over the lazy dog\n" * 200)
    return p


def chargen(*args, wait: bool = True):
    cmd = [sys.executable, "-m", "chargen", *map(str, args)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.1)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_the_lock_names_its_holder_and_is_released():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        first = RunLock(Path(d))
        assert (Path(d) / LOCK_FILE).read_text().startswith(f"process {os.getpid()} on ")
        with pytest.raises(ChargenError, match=f"is in use: process {os.getpid()} on .* is training into it"):
            RunLock(Path(d))
        first.release()
        assert not (Path(d) / LOCK_FILE).exists()
        RunLock(Path(d)).release()  # free again


@pytest.mark.slow
def test_a_folder_in_training_refuses_train_resume_and_overwrite(corpus, tmp_path):
    run = tmp_path / "run"
    holder = chargen(
        "train",
        corpus,
        "--out",
        run,
        "--max-time",
        "120",
        "--checkpoint-every",
        "5",
        "--eval-every",
        "100000",
        *SMALL,
        wait=False,
    )
    try:
        wait_for(run / "last" / "trainer.json", holder)
        config = (run / "config.json").read_bytes()
        for extra in ([], ["--resume"], ["--overwrite"]):
            r = chargen("train", corpus, "--out", run, "--max-steps", "3", *SMALL, *extra)
            assert r.returncode == 2, (extra, r.stderr)
            line = one_line(r.stderr)
            assert f"{run} is in use: process {holder.pid} on " in line and "chargen train" in line, line
            assert holder.poll() is None  # the holder trains on
        assert (run / "config.json").read_bytes() == config
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    # Killed with -9, it left its lock file behind; the lock itself died with it.
    assert (run / LOCK_FILE).exists()
    step = json.loads((run / "last" / "trainer.json").read_text())["step"]
    r = chargen("train", corpus, "--out", run, "--resume", "--max-time", "600", "--max-steps", step + 5, *SMALL)
    assert r.returncode == 0, r.stderr
    assert f"trained {step + 5} steps" in r.stdout, r.stdout
    assert not (run / LOCK_FILE).exists()  # a run that ends releases and removes it
    assert Sampler.load(run).generate("the", length=10, seed=1)


@pytest.mark.slow
def test_two_trainings_started_together_one_wins_the_other_is_refused(corpus, tmp_path):
    run = tmp_path / "same"
    procs = [
        chargen("train", corpus, "--out", run, "--max-steps", "40", "--checkpoint-every", "10", *SMALL, wait=False)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, _, err in results if code == 2)
    line = one_line(loser)
    assert "is in use: process" in line or "already exists (a run)" in line, line
    assert Sampler.load(run, checkpoint="last").generate("the", length=10, seed=1)
    assert sorted(p.name for p in run.iterdir()) == [
        "config.json",
        "last",
        "metrics.jsonl",
        "model.safetensors",
        "tokenizer.json",
    ]
