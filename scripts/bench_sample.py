"""Benchmark generation: the fast sampler against the naive one-nn.LSTM-call-per-character loop.

Usage::

    python scripts/bench_sample.py                       # 2x256 and 3x512 LSTMs, CPU
    python scripts/bench_sample.py --cell gru --device cuda

For each size, on a randomly initialised model (speed does not depend on the
weights) over a 65-character vocabulary:

* naive: ``logits, state = model(x, state)`` through ``nn.LSTM`` for every
  character, then the same sampling rule (decode.pick) on its logits, under
  ``torch.inference_mode`` (with autograd on, the carried state drags a
  growing graph along and the loop gets slower the longer it runs, so that
  baseline depends on the length and is not used);
* fast: ``Sampler.generate`` (one prompt forward, then FastStep per character);
* numpy: the torch-free step (``chargen.numpy_step``: prime, then one NumPy
  step per character), single stream.

All draw the same uniforms, so the texts must be identical; the script says
whether they are. Single-stream figures are medians of several rounds, with
the ratio fast / naive; then batched throughput for n = 64 and n = 1024.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from chargen.decode import pick, uniforms  # noqa: E402
from chargen.config import SampleOptions  # noqa: E402
from chargen.model import CharRNN, ModelConfig  # noqa: E402
from chargen import numpy_step  # noqa: E402
from chargen.sample import Sampler  # noqa: E402
from chargen.tokenizer import CharVocab  # noqa: E402

CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # tiny shakespeare's 65


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def naive(sampler: Sampler, prompt: str, length: int, seed: int, temperature: float) -> tuple[str, float]:
    model, vocab, device = sampler.model, sampler.vocab, sampler.device
    ids = [sampler.vocab.start_id] + vocab.encode(prompt)
    u = torch.from_numpy(uniforms(np.array([seed], dtype=np.uint64), 0, length)).to(device)
    sync(device)
    t0 = time.perf_counter()
    logits, state = model(torch.tensor([ids], device=device))
    logits = logits[:, -1]
    out = []
    for t in range(length):
        nxt = pick(logits, u[:, t], temperature, None, None, vocab.unk_id)     # (1,)
        out.append(int(nxt))
        if t + 1 < length:
            logits, state = model(nxt[:, None], state)                           # one nn.LSTM call per char
            logits = logits[:, -1]
    sync(device)
    return vocab.decode(out), time.perf_counter() - t0


def fast(sampler: Sampler, prompt: str, length: int, seed: int, temperature: float, n: int = 1):
    sync(sampler.device)
    t0 = time.perf_counter()
    text = sampler.generate(prompt, length=length, seed=seed, temperature=temperature, n=n)
    sync(sampler.device)
    return text, time.perf_counter() - t0


def numpy_generate(step, vocab, prompt: str, length: int, seed: int, temperature: float):
    t0 = time.perf_counter()
    logits, state = numpy_step.prime(step, [vocab.start_id] + vocab.encode(prompt))
    ids = list(numpy_step.sample_ids(step, logits, state, np.array([seed], dtype=np.uint64),
                                     SampleOptions(length=length, temperature=temperature), vocab.unk_id))
    return vocab.decode([int(i[0]) for i in ids]), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", default="lstm", choices=("lstm", "gru"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", default="2x256,3x512")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    vocab = CharVocab.build(CHARS, with_unk=False)
    print(f"{args.cell}, device {device}, {torch.get_num_threads()} threads, vocabulary {len(vocab)}", flush=True)
    for size in args.sizes.split(","):
        layers, hidden = (int(v) for v in size.split("x"))
        torch.manual_seed(0)
        model = CharRNN(ModelConfig(vocab_size=len(vocab), cell=args.cell, num_layers=layers, hidden_size=hidden))
        sampler = Sampler(model, vocab, device)
        naive_len = 400 if hidden <= 256 else 150
        fast_len = 4000
        step = numpy_step.NumpyStep({k: v.numpy() for k, v in model.state_dict().items()}, model.config)
        naive_rates, fast_rates, numpy_rates, identical = [], [], [], True
        for r in range(args.rounds):
            a, dt_naive = naive(sampler, "ROMEO:", naive_len, seed=r, temperature=1.0)
            b, _ = fast(sampler, "ROMEO:", naive_len, seed=r, temperature=1.0)
            c, _ = numpy_generate(step, vocab, "ROMEO:", naive_len, seed=r, temperature=1.0)
            identical &= a == b == c
            _, dt_fast = fast(sampler, "ROMEO:", fast_len, seed=r, temperature=1.0)
            _, dt_numpy = numpy_generate(step, vocab, "ROMEO:", fast_len, seed=r, temperature=1.0)
            naive_rates.append(naive_len / dt_naive)
            fast_rates.append(fast_len / dt_fast)
            numpy_rates.append(fast_len / dt_numpy)
        nv, fs, npy = (statistics.median(x) for x in (naive_rates, fast_rates, numpy_rates))
        print(f"{layers}x{hidden}: naive {nv:,.0f} chars/s, fast {fs:,.0f} chars/s ({fs / nv:.1f}x naive), "
              f"numpy {npy:,.0f} chars/s ({npy / fs:.2f}x fast, {npy / nv:.1f}x naive); "
              f"same text on all three: {'yes' if identical else 'NO'}", flush=True)
        for n in (64, 1024):
            length = 200 if n == 64 else 50
            rates = []
            for r in range(args.rounds):
                _, dt = fast(sampler, "ROMEO:", length, seed=r, temperature=1.0, n=n)
                rates.append(n * length / dt)
            print(f"    batched n={n}: {statistics.median(rates):,.0f} chars/s in total", flush=True)


if __name__ == "__main__":
    main()
