"""Benchmark generation on every backend, against the naive one-nn.LSTM-call-per-character loop.

Usage::

    python scripts/bench_sample.py                       # 2x256 and 3x512 LSTMs, CPU, 5 rounds
    python scripts/bench_sample.py --cell gru --rounds 3 --sizes 2x256

For each size, on a randomly initialised model (speed does not depend on the weights) over tiny
shakespeare's 65 characters, all drawing the same uniforms:

* naive: ``logits, state = model(x, state)`` through ``nn.LSTM`` for every character, then the same
  sampling rule (decode.pick), under ``torch.inference_mode``: the baseline;
* torch: ``Sampler.generate`` on the torch backend (one prompt forward, then FastStep per character);
* numpy: ``Sampler.generate`` on the NumPy backend (chargen.generate.numpy_step);
* numpy, 1 BLAS thread: the same in a child process with OPENBLAS_NUM_THREADS=1 (OpenBLAS splits the
  larger matrix-vector products over the cores; the CPU's limit below is one thread's);
* onnx: the model exported by ``chargen export``, stepped by onnxruntime, picked by NumPy (if installed).

Single stream: medians over rounds, and whether all give the same text. The CPU's limit: the
single-thread float32 matrix-vector GFLOP/s at the step's own shapes (a child process with one BLAS
thread), and the fraction of it each backend reaches (chars/s x FLOPs per character / that). Then
batched throughput for n = 8, 64 and 1024; then for 3x512, what float16 storage would give. Last, cold
start: ``chargen sample RUN --length 100`` as whole processes on each backend (median of --rounds).

With ``--device`` (cpu, cuda, mps), the torch backend on that device instead: one stream against the
naive loop on the same device, batched throughput, 64 streams through the server's batcher (in process),
and on CUDA the fixed-shape single step replayed as a CUDA graph against the step as it runs (whether
graphs would pay). ``python scripts/bench_sample.py --device cuda --sizes 3x1024``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np
import torch

from chargen.config import CELL_NAMES, CELLS, GATES, MIN_CELLS
from chargen.data.vocab import CharVocab
from chargen.generate.numpy_step import NumpyStep
from chargen.generate.numpy_step import pick as numpy_pick
from chargen.generate.sampler import Sampler
from chargen.generate.torch_step import pick, uniforms
from chargen.model.network import CharRNN, ModelConfig

CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # tiny shakespeare's 65
PROMPT = "ROMEO:"


@torch.inference_mode()
def naive(model, vocab, length: int, seed: int) -> tuple[str, float]:
    device = model.embedding.weight.device
    ids = [vocab.start_id] + vocab.encode(PROMPT)
    u = torch.from_numpy(uniforms(np.array([seed], dtype=np.uint64), 0, length)).to(device)
    t0 = time.perf_counter()
    logits, state = model(torch.tensor([ids], device=device))
    logits = logits[:, -1]
    out = []
    banned = None if vocab.unk_id is None else torch.tensor([vocab.unk_id], device=device)
    for t in range(length):
        nxt = pick(logits, u[:, t], 1.0, None, None, banned)  # (1,)
        out.append(int(nxt))
        if t + 1 < length:
            logits, state = model(nxt[:, None], state)  # one nn.LSTM call per char
            logits = logits[:, -1]
    return vocab.decode(out), time.perf_counter() - t0


def timed(sampler: Sampler, length: int, seed: int, n: int = 1):
    t0 = time.perf_counter()
    text = sampler.generate(PROMPT, length=length, seed=seed, temperature=1.0, n=n)
    return text, time.perf_counter() - t0


class OnnxSampler:
    """The exported step in onnxruntime, the same draws and rule as the sampler (greedy not needed here)."""

    def __init__(self, export_dir: Path, vocab):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        self.session = ort.InferenceSession(str(export_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        self.meta = json.loads((export_dir / "chargen.json").read_text())
        self.vocab = vocab

    def generate(self, length: int, seed: int, n: int = 1):
        t0 = time.perf_counter()
        state = {k: np.zeros([n if d == "batch" else d for d in s], np.float32) for k, s in self.meta["state"].items()}
        names = list(state)
        for i in [self.vocab.start_id] + self.vocab.encode(PROMPT):
            logits, *new = self.session.run(None, {"ids": np.full(n, i, dtype=np.int64), **state})
            state = dict(zip(names, new))
        seeds = np.uint64(seed) + np.arange(n, dtype=np.uint64)
        u = uniforms(seeds, 0, length)
        cols = []
        for t in range(length):
            ids = numpy_pick(logits, u[:, t], 1.0, None, None, self.vocab.unk_id)
            cols.append(ids)
            if t + 1 < length:
                logits, *new = self.session.run(None, {"ids": ids.astype(np.int64), **state})
                state = dict(zip(names, new))
        texts = [self.vocab.decode(row) for row in np.stack(cols, 1)]
        return (texts[0] if n == 1 else texts), time.perf_counter() - t0


def step_shapes(cell: str, layers: int, hidden: int, vocab: int) -> list[tuple[int, int]]:
    """The (rows, cols) of every matrix one step multiplies a vector by, as the NumPy step does: layer 0's
    state product (none for a min cell, whose first layer is a table), then each deeper layer's."""
    g, H = GATES[cell], hidden
    if cell in MIN_CELLS:  # gates on the input only
        return [(H, g * H)] * (layers - 1) + [(H, vocab)]
    if cell == "gru":  # input and hidden parts apart
        return [(H, g * H)] + [(H, g * H), (H, g * H)] * (layers - 1) + [(H, vocab)]
    return [(H, g * H)] + [(2 * H, g * H)] * (layers - 1) + [(H, vocab)]  # one product over [x, h]


_GFLOPS_CHILD = r"""
import sys, time, json, numpy as np
shapes, dtype = json.loads(sys.argv[1]), sys.argv[2]
mats = [np.random.default_rng(0).standard_normal(s).astype(dtype) for s in shapes]
xs = [np.random.default_rng(1).standard_normal((1, s[0])).astype(dtype) for s in shapes]
flops = sum(2 * r * c for r, c in shapes)
best = []
for _ in range(7):
    t0 = time.perf_counter()
    for _ in range(300):
        for x, w in zip(xs, mats):
            x @ w
    best.append((time.perf_counter() - t0) / 300)
t = sorted(best)[3]
print(json.dumps({"gflops": flops / t / 1e9, "step_s": t}))
"""


def matvec_limit(shapes, dtype: str = "float32") -> dict:
    """Single-thread matrix-vector GFLOP/s at these shapes, in a child with one BLAS thread."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", _GFLOPS_CHILD, json.dumps(shapes), dtype],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


_ONE_THREAD_CHILD = r"""
import json, statistics, sys, time
from chargen.generate.sampler import Sampler
run, length, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = Sampler.load(run, backend="numpy")
rates = []
for r in range(rounds):
    t0 = time.perf_counter()
    s.generate("ROMEO:", length=length, seed=r, temperature=1.0)
    rates.append(length / (time.perf_counter() - t0))
print(statistics.median(rates))
"""


def numpy_one_thread(run: Path, length: int, rounds: int) -> float:
    """The NumPy backend's single-stream chars/s with one BLAS thread (a child process)."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-c", _ONE_THREAD_CHILD, str(run), str(length), str(rounds)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout)


def float16_storage(step: NumpyStep, rounds: int) -> tuple[float, float, float]:
    """The matvecs of one 3x512 step: fp32 weights; fp16 weights widened to fp32 each step; fp16 matmul."""
    mats = [w for _, w in step.layers] + [step.head_w]
    xs = [np.ones((1, w.shape[0]), np.float32) for w in mats]
    half = [w.astype(np.float16) for w in mats]
    xs16 = [x.astype(np.float16) for x in xs]

    def rate(fn, reps):
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            times.append((time.perf_counter() - t0) / reps)
        return 1 / statistics.median(times)

    fp32 = rate(lambda: [x @ w for x, w in zip(xs, mats)], 300)
    widen = rate(lambda: [x @ w.astype(np.float32) for x, w in zip(xs, half)], 20)
    fp16 = rate(lambda: [x @ w for x, w in zip(xs16, half)], 5)
    return fp32, widen, fp16


def cold_start(run: Path, backend: str, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "chargen",
                "sample",
                str(run),
                "--length",
                "100",
                "--seed",
                "1",
                "--backend",
                backend,
            ],
            check=True,
            capture_output=True,
        )
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_run(model: CharRNN, vocab, folder: Path) -> Path:
    """A run folder holding ``model``: the golden run's files with this config and these weights."""
    import shutil

    from chargen.runs.checkpoint import save_weights

    src = REPO / "tests" / "fixtures" / "golden" / "run"
    run = folder / "run"
    shutil.copytree(src, run)
    (run / "last").is_dir() and shutil.rmtree(run / "last")
    config = json.loads((run / "config.json").read_text())
    config["model"] = model.config.to_dict()
    (run / "config.json").write_text(json.dumps(config))
    vocab.save(run / "tokenizer.json")
    save_weights(model, run / "model.safetensors")
    return run


def on_device(model: CharRNN, vocab, device: torch.device, rounds: int) -> None:
    """The torch backend on ``device``: one stream, batches, 64 streams through the batcher, CUDA graphs."""
    from chargen.serve.batcher import Batcher

    s = Sampler(model, vocab, device)
    timed(s, 20, seed=0)  # warm: kernels chosen, memory allocated
    naive_len, length = 200, 1000
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    base = statistics.median(naive_len / naive(s.model, vocab, naive_len, seed=r)[1] for r in range(rounds))
    one = statistics.median(length / timed(s, length, seed=r)[1] for r in range(rounds))
    print(
        f"  one stream: torch {one:,.0f} chars/s, naive {CELL_NAMES[model.config.cell]} loop {base:,.0f} "
        f"({one / base:.1f}x)",
        flush=True,
    )
    for n in (8, 64, 1024):
        rate = statistics.median(n * 200 / timed(s, 200, seed=r, n=n)[1] for r in range(rounds))
        print(f"  batched n={n:<5d} {rate:>12,.0f} chars/s in total", flush=True)
    batcher = Batcher(s)
    try:
        rates = []
        for r in range(rounds):
            t = time.perf_counter()
            requests = [batcher.submit(PROMPT, length=200, seed=1000 * r + i, temperature=0.8) for i in range(64)]
            for request in requests:
                request.texts(timeout=600)
            rates.append(64 * 200 / (time.perf_counter() - t))
        print(f"  64 streams through the batcher: {statistics.median(rates):,.0f} chars/s in total", flush=True)
    finally:
        batcher.close()
    if device.type != "cuda":
        print("  CUDA graphs: skipped (not a CUDA device)", flush=True)
        return
    for batch in (1, 64):
        _, state = s._prime(np.array([vocab.start_id]), batch)
        ids = torch.zeros(batch, dtype=torch.long, device=device)
        eager, graphed = graph_rates(s.fast_step, ids, state, rounds, sync)
        print(
            f"  one step at batch {batch}: as it runs {eager:,.0f} steps/s, as a CUDA graph {graphed:,.0f} "
            f"({graphed / eager:.2f}x)",
            flush=True,
        )


@torch.inference_mode()
def graph_rates(step, ids, state, rounds: int, sync, reps: int = 2000) -> tuple[float, float]:
    """Steps/s of the single step called as it is, and replayed as a captured CUDA graph (same shapes)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step(ids, state)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(ids, state)

    def rate(fn) -> float:
        sync()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        return reps / (time.perf_counter() - t)

    eager = statistics.median(rate(lambda: step(ids, state)) for _ in range(rounds))
    return eager, statistics.median(rate(graph.replay) for _ in range(rounds))


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return int(text)


def sizes(text: str) -> str:
    import re

    if not re.fullmatch(r"[1-9]\d*x[1-9]\d*(,[1-9]\d*x[1-9]\d*)*", text):
        raise argparse.ArgumentTypeError(f"must be LAYERSxHIDDEN pairs like 2x256,3x512, got {text!r}")
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", default="lstm", choices=CELLS)
    ap.add_argument("--rounds", type=positive, default=5)
    ap.add_argument("--sizes", type=sizes, default="2x256,3x512", help="LAYERSxHIDDEN, comma-separated")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps: the torch backend there (see above)")
    args = ap.parse_args()
    if args.device is not None:
        from chargen.errors import ChargenError
        from chargen.model.devices import resolve_device

        try:
            device = resolve_device(args.device)
        except ChargenError as e:
            ap.exit(2, f"{ap.prog}: error: {e}\n")
        vocab = CharVocab.build(CHARS, with_unk=False)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        print(
            f"{args.cell}, {name}, torch {torch.__version__}, vocabulary {len(vocab)}, medians of {args.rounds} rounds",
            flush=True,
        )
        for size in args.sizes.split(","):
            layers, hidden = (int(v) for v in size.split("x"))
            torch.manual_seed(0)
            print(f"\n{layers}x{hidden} {CELL_NAMES[args.cell]} on {device}", flush=True)
            model = CharRNN(ModelConfig(vocab_size=len(vocab), cell=args.cell, num_layers=layers, hidden_size=hidden))
            on_device(model, vocab, device, args.rounds)
        return
    try:
        import onnxruntime  # noqa: F401

        from chargen.generate.export import export
    except ImportError:
        export = None
    vocab = CharVocab.build(CHARS, with_unk=False)
    print(
        f"{args.cell}, CPU, torch {torch.__version__} with {torch.get_num_threads()} threads, numpy "
        f"{np.__version__}, vocabulary {len(vocab)}, medians of {args.rounds} rounds",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench-sample-"))
    for size in args.sizes.split(","):
        layers, hidden = (int(v) for v in size.split("x"))
        torch.manual_seed(0)
        model = CharRNN(ModelConfig(vocab_size=len(vocab), cell=args.cell, num_layers=layers, hidden_size=hidden))
        run = make_run(model, vocab, tmp / size)
        backends = {"torch": Sampler.load(run, backend="torch"), "numpy": Sampler.load(run, backend="numpy")}
        onnx_sampler = None
        if export is not None:
            onnx_sampler = OnnxSampler(export(run, tmp / size / "onnx"), vocab)
        naive_len = 400 if hidden <= 256 else 150
        length = 4000 if hidden <= 256 else 1500
        rates = {k: [] for k in ("naive", "torch", "numpy", "onnx")}
        identical = True
        for r in range(args.rounds):
            a, dt = naive(backends["torch"].model, vocab, naive_len, seed=r)
            rates["naive"].append(naive_len / dt)
            same = [backends[k].generate(PROMPT, length=naive_len, seed=r, temperature=1.0) for k in backends]
            if onnx_sampler is not None:
                same.append(onnx_sampler.generate(naive_len, seed=r)[0])
            identical &= all(t == a for t in same)
            for k, s in backends.items():
                rates[k].append(length / timed(s, length, seed=r)[1])
            if onnx_sampler is not None:
                rates["onnx"].append(length / onnx_sampler.generate(length, seed=r)[1])
        med = {k: statistics.median(v) for k, v in rates.items() if v}
        med["numpy1"] = numpy_one_thread(run, length, args.rounds)
        shapes = step_shapes(args.cell, layers, hidden, len(vocab))
        flops = sum(2 * r_ * c_ for r_, c_ in shapes)
        limit = matvec_limit(shapes)
        print(
            f"\n{layers}x{hidden} {CELL_NAMES[args.cell]}, one stream ({flops / 1e6:.2f} MFLOP per character; "
            f"single-thread fp32 matvec at these shapes: {limit['gflops']:.1f} GFLOP/s, a limit of "
            f"{1 / limit['step_s']:,.0f} chars/s); same text on all: {'yes' if identical else 'NO'}",
            flush=True,
        )
        labels = {"numpy1": "numpy, 1 BLAS thread"}
        for k in ("naive", "torch", "numpy", "numpy1", "onnx"):
            if k in med:
                print(
                    f"  {labels.get(k, k):21s} {med[k]:>9,.0f} chars/s   {med[k] / med['naive']:5.1f}x naive   "
                    f"{med[k] / med['torch']:5.2f}x torch   {med[k] * flops / 1e9:5.1f} GFLOP/s = "
                    f"{med[k] * flops / 1e9 / limit['gflops']:4.0%} of the matvec limit",
                    flush=True,
                )
        for n in (8, 64, 1024):
            blen = {8: 500, 64: 200, 1024: 50}[n] // (2 if hidden > 256 else 1)
            row = {}
            for k, s in backends.items():
                row[k] = statistics.median(n * blen / timed(s, blen, seed=r, n=n)[1] for r in range(args.rounds))
            if onnx_sampler is not None:
                row["onnx"] = statistics.median(
                    n * blen / onnx_sampler.generate(blen, seed=r, n=n)[1] for r in range(args.rounds)
                )
            print(
                f"  batched n={n:<5d} "
                + "   ".join(f"{k} {v:,.0f}" for k, v in row.items())
                + f" chars/s in total; numpy {row['numpy'] / row['torch']:.2f}x torch",
                flush=True,
            )
        if hidden >= 512:
            weights = (
                sum(w.nbytes for _, w in backends["numpy"].runtime.step.layers)
                + backends["numpy"].runtime.step.head_w.nbytes
            )
            fp32, widen, fp16 = float16_storage(backends["numpy"].runtime.step, args.rounds)
            print(
                f"  the matrices one step reads: {weights / 2**20:.1f} MiB in fp32; their matvecs alone: fp32 "
                f"{fp32:,.0f} steps/s; fp16 storage widened to fp32 each step {widen:,.0f}; fp16 matmul "
                f"(NumPy has no fp16 BLAS) {fp16:,.0f}",
                flush=True,
            )
        if size == args.sizes.split(",")[0]:
            cold = {k: cold_start(run, k, args.rounds) for k in ("numpy", "torch")}
            print(
                f"  cold start, chargen sample RUN --length 100 (whole process): numpy {cold['numpy']:.2f} s, "
                f"torch {cold['torch']:.2f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
