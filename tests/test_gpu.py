"""What only a CUDA device can show (all marked gpu: skipped without one; scripts/gpu_check.sh runs them),
and the GPU check's dry run, which runs everywhere."""

import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from chargen import Sampler
from chargen.config import ModelConfig
from chargen.model.dtypes import layer_dtypes
from chargen.model.network import CharRNN
from chargen.model.precision import precision_plan
from chargen.training.trainer import Trainer, train
from conftest import REPO

CUDA = torch.device("cuda")
TINY = dict(num_layers=2, hidden_size=64, batch_size=16, bptt=32, warmup_steps=0, preview_chars=0, log_every=10)


@pytest.mark.gpu
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_each_layer_runs_in_the_dtype_the_plan_names(cell):
    model = CharRNN(ModelConfig(vocab_size=65, cell=cell, num_layers=2, hidden_size=64)).to(CUDA)
    bf16 = layer_dtypes(model, "bf16", CUDA)
    assert bf16["rnn"] == "float32" and bf16["head"] == "bfloat16" and bf16["loss"] == "float32"
    fp16 = layer_dtypes(model, "fp16", CUDA)
    assert fp16["rnn"] == "float16" and fp16["head"] == "float16" and precision_plan("cuda", "fp16").grad_scaler
    assert set(layer_dtypes(model, "fp32", CUDA).values()) == {"float32"}


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_no_host_sync_inside_a_training_step(text_file, tmp_path, monkeypatch, precision):
    """torch's sync debug mode raises on any wait for the GPU (item, tolist, nonzero, a device-to-host copy)."""
    original = Trainer._step

    def strict(self):
        torch.cuda.set_sync_debug_mode("error")
        try:
            original(self)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(Trainer, "_step", strict)
    result = train(text_file, out=tmp_path / "run", max_steps=40, device="cuda", precision=precision, **TINY)
    assert result.steps == 40 and result.best_val_loss < 2.5


@pytest.mark.gpu
def test_a_pickled_cuda_sampler_travels_as_cpu_tensors(golden_run):
    s = Sampler.load(golden_run, device="cuda", backend="torch")
    state = s.runtime.__getstate__()
    assert all(t.device.type == "cpu" for t in state["weights"].values()) and state["device"] == "cuda"
    copy = pickle.loads(pickle.dumps(s))
    assert copy.device.type == "cuda"
    assert copy.generate("the", length=80, seed=3) == s.generate("the", length=80, seed=3)


@pytest.mark.gpu
def test_the_batcher_on_cuda_gives_the_samplers_text_and_logprobs(golden_run):
    from chargen.serve.batcher import Batcher

    s = Sampler.load(golden_run, device="cuda", backend="torch")
    batcher = Batcher(s)
    try:
        requests = [batcher.submit("the ", length=60, seed=i, logprobs=2 if i % 2 else None) for i in range(16)]
        texts = [r.texts(timeout=60)[0] for r in requests]
    finally:
        batcher.close()
    assert texts == [s.generate("the ", length=60, seed=i) for i in range(16)]


@pytest.mark.gpu
def test_pinned_host_copies_round_trip():
    from chargen.generate.torch_step import HostCopy

    host = HostCopy(CUDA)
    for n in (1, 64, 5000):  # the buffer grows past its first size
        a = np.random.default_rng(n).random(n)
        t = host.write(a)
        assert t.device.type == "cuda" and np.array_equal(host.read(t * 2), a * 2)


@pytest.mark.slow
def test_the_gpu_checks_dry_run_runs_every_step_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)
    start = time.monotonic()
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert time.monotonic() - start < 180
    steps = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()]
    names = [s[0] for s in steps]
    assert sorted(set(names)) == sorted(
        ["env", "tests_gpu", "train_throughput", "decode", "cells", "tests_cpu", "time_to_quality"]
    ) and all(s[1] == "0" for s in steps)
    files = {p.name for p in out.iterdir()}
    for name in ("env", "tests_gpu", "train_throughput", "decode", "cells", "time_to_quality", "tests_cpu"):
        assert f"{name}.txt" in files
    assert "layer dtypes" in (out / "env.txt").read_text()
    assert (out / "train_throughput.txt").read_text().count("median: bare") == 2  # fp32, bf16 (fp16 needs CUDA)
    assert "64 streams through the batcher" in (out / "decode.txt").read_text()
    cells = (out / "cells.txt").read_text()
    assert all(f"\n{row}" in cells for row in ("lstm ", "gru ", "rnn ", "mingru (scan)", "minlstm (recurrence)"))
    assert "best validation" in (out / "time_to_quality.txt").read_text()
    assert "every step passed" in done.stdout


@pytest.mark.parametrize(
    "args,env,message",
    [
        (["--fast"], {}, "unknown argument --fast; use --dry-run or nothing"),
        (["--dry-run", "x"], {}, "one argument at most (--dry-run)"),
        (["--dry-run"], {"PYTHON": "/no/python"}, "no Python at PYTHON=/no/python; set PYTHON to the interpreter"),
        (["--dry-run"], {"OUT": "/proc/1"}, "cannot write in /proc/1; set OUT to a folder you can write"),
        ([], {}, "torch sees no CUDA device here; run it on a GPU machine, or pass --dry-run"),
    ],
)
def test_the_gpu_check_checks_its_inputs_first(args, env, message, tmp_path):
    env = {"PYTHON": sys.executable, "OUT": str(tmp_path / "out"), **env}
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"gpu_check.sh: {message}"), done.stderr
    assert not (tmp_path / "out" / "env.txt").exists()  # no step ran


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_gpu_check_and_every_step(tmp_path, sig):
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable, TMPDIR=str(tmp_path))
    p = subprocess.Popen(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's job is
    )
    deadline = time.monotonic() + 60
    steps = tmp_path / "out" / "steps.tsv"
    while not (steps.is_file() and "tests_gpu" in steps.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)  # until a later step runs: the training benchmark
    os.killpg(p.pid, sig) if sig == signal.SIGINT else p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and err.strip().endswith(
        "gpu_check: interrupted; the outputs so far are in " + env["OUT"]
    )
    assert [x.name for x in tmp_path.iterdir() if x.name.startswith("chargen-gpu-check")] == []  # scratch removed
    ps = subprocess.run(["ps", "-eo", "pgid,args"], capture_output=True, text=True).stdout
    assert [line for line in ps.splitlines() if line.split()[0] == str(p.pid)] == []  # no step left running
