"""Multi-process training through torchrun (gloo on CPU): same result as one process, exact resume."""

import os
import re
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from chargen.training.trainer import train
from conftest import REPO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available"
    ),
]

ARGS = [
    "--device",  # gloo on the CPU, whatever the machine has
    "cpu",
    "--layers",
    "1",
    "--hidden",
    "32",
    "--batch-size",
    "8",
    "--bptt",
    "16",
    "--eval-every",
    "10",
    "--preview-chars",
    "0",
    "--warmup-steps",
    "0",
    "--lr",
    "1e-2",
    "--schedule",
    "constant",
    "--checkpoint-every",
    "10",
]


def why(r: subprocess.CompletedProcess) -> str:
    """What the processes said before torchrun's own traceback: the lines that name an error or an abort
    (a worker's "terminate called ..." is otherwise cut off by the launcher's long report), then the end."""
    marks = ("error", "terminate", "what()", "abort", "signal", "exception")
    said = [line for line in r.stderr.splitlines() if any(m in line.lower() for m in marks)]
    return "\n".join(said[:40]) + "\n...\n" + r.stderr[-1500:]


def torchrun(*args, procs=2, timeout=180):
    env = dict(os.environ, PYTHONPATH=str(REPO), GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={procs}",
        "-m",
        "chargen",
        *[str(a) for a in args],
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.parametrize("cell,softmax", [("lstm", "full"), ("gru", "full"), ("lstm", "adaptive")])
def test_two_processes_train_like_one(text_file, tmp_path, cell, softmax):
    r = torchrun(
        "train", text_file, "--out", tmp_path / "ddp", "--cell", cell, "--softmax", softmax, "--max-steps", "20", *ARGS
    )
    assert r.returncode == 0, why(r)
    assert r.stdout.count("trained 20 steps") == 1  # one summary, from rank 0
    opts = dict(
        cell=cell,
        softmax=softmax,
        num_layers=1,
        hidden_size=32,
        batch_size=8,
        bptt=16,
        eval_every=10,
        preview_chars=0,
        warmup_steps=0,
        lr=1e-2,
        schedule="constant",
        checkpoint_every=10,
        max_steps=20,
    )
    train(text_file, out=tmp_path / "one", **opts)
    # DDP averages the two halves' gradients: the same step as one process over all 8 streams
    for name in ("model", "state"):
        a = load_file(str(tmp_path / "one" / "last" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "ddp" / "last" / f"{name}.safetensors"))
        for k in a:
            if k.startswith("rng"):
                continue
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert {"rng_cpu.0", "rng_cpu.1"} <= set(load_file(str(tmp_path / "ddp" / "last" / "state.safetensors")))


def test_two_process_resume_is_exact_and_needs_the_same_world(text_file, tmp_path):
    for name, steps in (("straight", "20"), ("split", "10")):
        r = torchrun("train", text_file, "--out", tmp_path / name, "--max-steps", steps, *ARGS)
        assert r.returncode == 0, why(r)
    r = torchrun("train", text_file, "--out", tmp_path / "split", "--max-steps", "20", "--resume")
    assert r.returncode == 0, why(r)
    for name in ("model", "optimizer", "state"):
        a = load_file(str(tmp_path / "straight" / "last" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "split" / "last" / f"{name}.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    single = subprocess.run(
        [
            sys.executable,
            "-m",
            "chargen",
            "train",
            str(text_file),
            "--out",
            str(tmp_path / "split"),
            "--max-steps",
            "30",
            "--resume",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert single.returncode == 2
    assert "checkpointed by 2 process(es); resume it with the same number (this is 1)" in single.stderr


def test_a_bad_input_stops_every_process(tmp_path):
    r = torchrun("train", tmp_path / "missing.txt", "--out", tmp_path / "run", *ARGS, timeout=120)
    assert r.returncode != 0
    assert r.stderr.count("missing.txt does not exist") == 2  # both ranks, no hang
    # torchrun reports its failed children with a traceback of its own; none comes from chargen
    assert not re.search(r'File "[^"]*chargen/', r.stderr)
    assert not (tmp_path / "run").exists()


def test_a_batch_size_that_does_not_split_is_refused_before_the_folder_exists(text_file, tmp_path):
    """Issue 8: under DDP, --batch-size divisible by the process count was checked after the folder existed."""
    r = torchrun(
        "train",
        text_file,
        "--out",
        tmp_path / "run",
        "--max-steps",
        "5",
        *[a if a != "8" else "7" for a in ARGS],
        timeout=120,
    )
    assert r.returncode != 0
    assert r.stderr.count("batch size 7 must be a multiple of the 2 processes") == 2, r.stderr[-2000:]
    assert not (tmp_path / "run").exists()
