"""Issue 31, item 1: storage faults. A file-size limit (RLIMIT_FSIZE, which needs no privileges) or a small
tmpfs fills during a checkpoint, `prepare` and `export`; a read-only file system under the run, the cache
and the export. Each must end in one line naming the path and the cause, exit status 2, the previous
checkpoint and cache intact, nothing half-written where a reader would take it for whole, and a resume
afterwards that is exact."""

from __future__ import annotations

import os
import random
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from chargen.training.trainer import train
from conftest import one_error_line

TINY = dict(
    num_layers=1, hidden_size=32, batch_size=8, bptt=16, lr=1e-2, warmup_steps=0, preview_chars=0, eval_every=10
)


@pytest.fixture
def text_file(tmp_path) -> Path:
    rng = random.Random(0)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "runs", "far", "away"]
    path = tmp_path / "text.txt"
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(2500)), encoding="utf-8")
    return path


def chargen(*args, fsize: int | None = None, cwd=None) -> subprocess.CompletedProcess:
    """``chargen ARGS`` in a process of its own, with a file-size limit of ``fsize`` bytes if given."""

    def limit():
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run(
        [sys.executable, "-m", "chargen", *map(str, args), "--no-progress"]
        if args[0] == "train"
        else [sys.executable, "-m", "chargen", *map(str, args)],
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def stray(folder: Path) -> list[str]:
    """Entries a crash or a failed write could leave: staging folders and temporary files."""
    return [
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.name.endswith(".tmp") or p.name.startswith(".last.") or p.name == "last.old"
    ]


class Disk:
    """A small tmpfs mounted for one test (needs root and a kernel that lets the test mount)."""

    def __init__(self, path: Path, size: str):
        self.path = path
        path.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")

    def fill(self, leave: int = 0) -> None:
        """Fill the disk, leaving about ``leave`` bytes."""
        free = os.statvfs(self.path).f_bavail * os.statvfs(self.path).f_frsize
        (self.path / "filler").write_bytes(b"\0" * max(0, free - leave))

    def read_only(self) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    made: list[Disk] = []

    def make(size: str = "1m") -> Disk:
        made.append(Disk(tmp_path / f"disk{len(made)}", size))
        return made[-1]

    yield make
    for d in made:
        d.unmount()


def test_a_checkpoint_over_the_file_size_limit_is_one_line_and_the_previous_one_survives(text_file, tmp_path):
    """The issue's first report: `SafetensorError: ... File too large` ended in a traceback."""
    run = tmp_path / "run"
    train(text_file, out=run, max_steps=20, **TINY)
    before = tree(run / "last")
    limit = len((run / "model.safetensors").read_bytes()) + 1  # the weights fit, the optimizer's state not
    assert len(before["optimizer.safetensors"]) > limit
    done = chargen("train", "--out", run, "--resume", "--max-steps", 40, fsize=limit)
    assert done.returncode == 2, done.stderr
    one_error_line(
        done.stderr.strip().splitlines()[-1],
        f"chargen train: error: cannot write {run}/last: File too large",
        f"the previous checkpoint there is intact: free some space, then chargen train --out {run} --resume",
    )
    assert "Traceback" not in done.stderr
    assert tree(run / "last") == before and stray(run) == []
    again = chargen("train", "--out", run, "--resume", "--max-steps", 40)
    assert again.returncode == 0, again.stderr
    assert (run / "last" / "trainer.json").exists()


def test_best_weights_over_the_file_size_limit_keep_the_previous_ones(text_file, tmp_path):
    run = tmp_path / "run"
    train(text_file, out=run, max_steps=20, **TINY)
    before = tree(run)
    done = chargen("train", "--out", run, "--resume", "--max-steps", 40, fsize=1000)
    assert done.returncode == 2
    one_error_line(
        done.stderr.strip().splitlines()[-1],
        f"chargen train: error: cannot write {run}/model.safetensors: File too large",
        f"the previous best weights and checkpoint are intact: free some space, then chargen train --out {run} --resume",
    )
    assert {k: v for k, v in tree(run).items() if k != "metrics.jsonl"} == {
        k: v for k, v in before.items() if k != "metrics.jsonl"
    }
    assert stray(run) == []


def test_a_resume_after_a_failed_checkpoint_is_exact(text_file, tmp_path):
    """Trained 20 steps, a checkpoint at 40 that fails, then 20 to 40 again: the same bits as 40 in one go
    (both runs given the same cosine, --decay-steps 40)."""
    run, straight = tmp_path / "run", tmp_path / "straight"
    opts = dict(TINY, decay_steps=40)
    train(text_file, out=run, max_steps=20, **opts)
    train(text_file, out=straight, max_steps=40, **opts)
    limit = len((run / "model.safetensors").read_bytes()) + 1
    assert chargen("train", "--out", run, "--resume", "--max-steps", 40, fsize=limit).returncode == 2
    assert chargen("train", "--out", run, "--resume", "--max-steps", 40).returncode == 0
    for name in ("model.safetensors", "optimizer.safetensors", "state.safetensors"):
        got, want = load_file(run / "last" / name), load_file(straight / "last" / name)
        assert got.keys() == want.keys() and all((got[k] == want[k]).all() for k in got), name


def test_a_full_disk_at_the_first_checkpoint_leaves_no_run(text_file, disk):
    d = disk("64k")
    done = chargen("train", text_file, "--out", d.path / "run", "--max-steps", 5, "--layers", 1, "--hidden", 128)
    assert done.returncode == 2
    one_error_line(done.stderr.strip().splitlines()[-1], "cannot write", "No space left on device")
    assert not (d.path / "run").exists() and stray(d.path) == []


def test_a_full_disk_during_prepare_leaves_no_cache_entry_and_another_cache_works(text_file, disk, tmp_path):
    big = tmp_path / "big.txt"
    big.write_text(text_file.read_text() * 4)
    d = disk("128k")
    done = chargen("prepare", big, "--cache-dir", d.path / "cache")
    assert done.returncode == 2
    one_error_line(
        done.stderr,
        f"chargen prepare: error: cannot write {d.path / 'cache' / 'prepared'}/",
        "No space left on device; free some space, or give another cache folder",
    )
    assert [p.name for p in (d.path / "cache" / "prepared").iterdir()] == []
    assert chargen("prepare", big, "--cache-dir", tmp_path / "cache").returncode == 0


def test_a_full_disk_during_export_leaves_no_export(golden_run, disk):
    d = disk("1m")
    d.fill(leave=8 << 10)
    done = chargen("export", golden_run, "-o", d.path / "onnx")
    assert done.returncode == 2
    one_error_line(
        done.stderr, f"chargen export: error: cannot write the export into {d.path / 'onnx'} (No space left on device)"
    )
    assert not (d.path / "onnx").exists()


def test_a_read_only_file_system_is_one_line_for_every_writer(text_file, disk, golden_run):
    d = disk("4m")
    train(text_file, out=d.path / "run", max_steps=5, **TINY)
    before = tree(d.path / "run")
    d.read_only()
    cases = [
        (["train", "--out", d.path / "run", "--resume", "--max-steps", 10], f"cannot lock {d.path / 'run'}"),
        (["train", text_file, "--out", d.path / "new", "--max-steps", 3], f"cannot create {d.path / 'new'}"),
        (["prepare", text_file, "--cache-dir", d.path / "cache"], "cannot write"),
        (["export", golden_run, "-o", d.path / "onnx"], f"cannot make the folder {d.path / 'onnx'}"),
    ]
    for args, fragment in cases:
        done = chargen(*args)
        assert done.returncode == 2, (args, done.stderr)
        one_error_line(done.stderr, fragment, "Read-only file system")
    assert tree(d.path / "run") == before
    done = chargen("sample", d.path / "run", "--length", 20, "--seed", 1)  # reading still works
    assert done.returncode == 0 and len(done.stdout) >= 20
