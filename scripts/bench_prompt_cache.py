"""Benchmark the server's prompt cache: time to the first character of a completion whose prompt was read
before (kept) against one read for the first time, through the batcher the server decodes with.

Usage::

    python scripts/bench_prompt_cache.py                 # 2x256 LSTM, prompts of 64 to 16,384 characters
    python scripts/bench_prompt_cache.py --rounds 5 --lengths 1000,4000

For each prompt length, each round submits a prompt never seen (read: the baseline) and then the prompt of
the round before (kept), each asking for one character, and times submit to the first character. Medians
over the rounds. The thread batcher (in this process) so that the time is the batcher's, not a pipe's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch

from chargen.data.vocab import CharVocab
from chargen.generate.sampler import Sampler
from chargen.model.network import CharRNN, ModelConfig
from chargen.serve.batcher import Batcher

CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def first_char(batcher: Batcher, prompt: str) -> float:
    t0 = time.perf_counter()
    request = batcher.submit(prompt, length=1, seed=1)
    for kind, _, _ in request.iter_events(timeout=120):
        if kind == "text":
            return time.perf_counter() - t0
    raise RuntimeError("no character came")


def prompt_of(length: int, salt: int) -> str:
    """A prompt of ``length`` characters of tiny shakespeare's alphabet, one for each salt."""
    word = "".join("abcdefghij"[int(d)] for d in str(salt + 1))
    return (f"{word} ROMEO: and what of it, my lord? " * (length // 30 + 1))[:length]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--lengths", default="64,256,1024,4096,16384")
    p.add_argument("--size", default="2x256", help="LAYERSxHIDDEN")
    args = p.parse_args()
    layers, hidden = map(int, args.size.split("x"))
    torch.manual_seed(0)
    torch.set_num_threads(1)
    vocab = CharVocab.build(CHARS, with_unk=False)
    model = CharRNN(ModelConfig(vocab_size=len(vocab), cell="lstm", num_layers=layers, hidden_size=hidden))
    batcher = Batcher(Sampler(model, vocab), prompt_cache=256)
    print(f"{args.size} LSTM on the CPU, torch {torch.__version__}, 1 thread; median of {args.rounds} rounds")
    print(f"{'prompt':>8s}  {'read (ms)':>10s}  {'kept (ms)':>10s}  {'speed-up':>8s}")
    try:
        for length in map(int, args.lengths.split(",")):
            first_char(batcher, prompt_of(length, -1))  # warm-up
            read, kept = [], []
            for r in range(args.rounds):
                read.append(first_char(batcher, prompt_of(length, r)))
                kept.append(first_char(batcher, prompt_of(length, r)))
            a, b = statistics.median(read) * 1e3, statistics.median(kept) * 1e3
            print(f"{length:8,d}  {a:10.2f}  {b:10.2f}  {a / b:7.1f}x")
        print(f"cache: {batcher.cache.hits} hits, {batcher.cache.misses} misses, {len(batcher.cache)} kept")
    finally:
        batcher.close()


if __name__ == "__main__":
    main()
