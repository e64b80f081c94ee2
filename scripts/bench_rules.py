"""Benchmark what the rules on the logits cost a single stream, and what the searches cost.

Usage::

    python scripts/bench_rules.py                    # 2x256 LSTM, tiny shakespeare's 65 characters, 7 rounds
    python scripts/bench_rules.py --rounds 3 --length 2000 --backends numpy

On a randomly initialised model (speed does not depend on the weights), one stream of ``--length``
characters at temperature 1 with each set of rules, on each backend; the sets run interleaved within each
round, so that a slower moment of the machine falls on all of them alike. The baseline is the same call
with no rule, in the same rounds. Prints the median characters per second of each and its cost against
the baseline (the issue's target: at most 10 %). Then, for scale, beam search (width 4) and best-of-4
against one sample.
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
from chargen.generate.numpy_step import NumpyRuntime, NumpyStep
from chargen.generate.sampler import Sampler
from chargen.model.network import CharRNN, ModelConfig

CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # tiny shakespeare's 65
RULES = {
    "none (baseline)": {},
    "presence + frequency": dict(presence_penalty=0.5, frequency_penalty=0.3),
    "repetition (last 64)": dict(repetition_penalty=1.2),
    "logit bias (3 characters)": dict(logit_bias={"e": -2.0, " ": 1.0, "\n": -100}),
    "min-p 0.05": dict(min_p=0.05),
    "all of them": dict(
        presence_penalty=0.5, frequency_penalty=0.3, repetition_penalty=1.2, logit_bias={"e": -2.0}, min_p=0.05
    ),
}


def samplers(layers: int, hidden: int) -> dict[str, Sampler]:
    torch.manual_seed(0)
    vocab = CharVocab.build(CHARS, with_unk=False)
    model = CharRNN(ModelConfig(vocab_size=len(vocab), cell="lstm", num_layers=layers, hidden_size=hidden)).eval()
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    return {
        "numpy": Sampler._with(NumpyRuntime(NumpyStep(weights, model.config)), vocab),
        "torch": Sampler(model, vocab),
    }


def rate(s: Sampler, length: int, seed: int, settings: dict) -> float:
    """Characters per second of one ``generate`` call."""
    t0 = time.perf_counter()
    s.generate("ROMEO:", length=length, temperature=1.0, seed=seed, **settings)
    return length / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--length", type=int, default=3000)
    p.add_argument("--size", default="2x256", help="LAYERSxHIDDEN")
    p.add_argument("--backends", default="numpy,torch")
    args = p.parse_args()
    layers, hidden = map(int, args.size.split("x"))
    torch.set_num_threads(1)
    print(f"{args.size} LSTM, {len(CHARS)} characters, {args.length} characters a call, median of {args.rounds} rounds")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    for name, s in samplers(layers, hidden).items():
        if name not in args.backends.split(","):
            continue
        for settings in RULES.values():  # warm up: first calls build caches
            s.generate("ROMEO:", length=200, temperature=1.0, seed=1, **settings)
        rates: dict[str, list[float]] = {k: [] for k in RULES}
        for r in range(args.rounds):
            for label, settings in RULES.items():
                rates[label].append(rate(s, args.length, r, settings))
        base = statistics.median(rates["none (baseline)"])
        print(f"\n{name} backend")
        for label, got in rates.items():
            med = statistics.median(got)
            cost = "" if label.startswith("none") else f"   cost {100 * (1 - med / base):5.1f} %"
            print(f"  {label:28s} {med:9,.0f} chars/s{cost}")
        searches = {"one sample": dict(), "beam of 4": dict(beam=4), "best of 4": dict(best_of=4)}
        length = args.length // 4
        print(f"  searches, {length} characters:")
        for label, settings in searches.items():
            got = [rate(s, length, r, settings) for r in range(args.rounds)]
            print(f"    {label:26s} {statistics.median(got):9,.0f} chars/s of output")


if __name__ == "__main__":
    main()
