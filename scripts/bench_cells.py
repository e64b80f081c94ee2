"""Training throughput of each recurrent cell at the LSTM's parameter count, by window length (issue 36).

Usage::

    python scripts/bench_cells.py                       # LSTM 2x256's recurrent parameters; T = 64, 256, 1024
    python scripts/bench_cells.py --hidden 512 --rounds 5 --chars 32768

For each cell, the recurrent stack alone (what the cells change: the embedding and the output layer are the
same for all) at the hidden size whose parameter count is nearest the LSTM's: ``nn.LSTM``, ``nn.GRU``,
``nn.RNN`` (tanh), and chargen's ``MinRNN`` for minGRU and minLSTM (a parallel scan in log space over the
window). Each step is a forward and backward pass over ``--chars`` characters cut into windows of T
(batch = chars / T), on this machine's CPU threads. Median over ``--rounds`` after one warm-up, in
characters per second, and each cell against the LSTM at the same T (measured in the same run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chargen.model.minrnn import MinRNN

CELLS = ("lstm", "gru", "rnn", "mingru", "minlstm")


def stack(cell: str, hidden: int, layers: int) -> torch.nn.Module:
    if cell in ("mingru", "minlstm"):
        return MinRNN(cell, hidden, hidden, layers)
    return {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](
        hidden, hidden, layers, batch_first=True
    )


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def matched_hidden(cell: str, target: int, layers: int) -> int:
    """The hidden size (a multiple of 8) whose stack's parameter count is nearest ``target``."""
    best = min(range(8, 4097, 8), key=lambda h: abs(_closed_form(cell, h, layers) - target))
    return best


def _closed_form(cell: str, h: int, layers: int) -> int:
    gates = {"lstm": 4, "gru": 3, "rnn": 1}
    if cell in gates:
        return layers * gates[cell] * h * (2 * h + 2)
    g = {"mingru": 2, "minlstm": 3}[cell]
    return layers * (g * h * (h + 1) + 2 * h)


def timed(module: torch.nn.Module, hidden: int, T: int, chars: int, rounds: int) -> float:
    B = max(1, chars // T)
    x = torch.randn(B, T, hidden)
    rates = []
    for r in range(rounds + 1):
        t0 = time.perf_counter()
        out, _ = module(x)
        out.square().mean().backward()
        seconds = time.perf_counter() - t0
        if r:  # the first is a warm-up
            rates.append(B * T / seconds)
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256, help="the LSTM's hidden size (default 256)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lengths", default="64,256,1024", help="window lengths T (default 64,256,1024)")
    parser.add_argument("--chars", type=int, default=16384, help="characters per step (default 16384)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    target = count(stack("lstm", args.hidden, args.layers))
    lengths = [int(t) for t in args.lengths.split(",")]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.layers} layers, recurrent parameters "
        f"nearest the LSTM {args.layers}x{args.hidden}'s {target:,}; {args.chars:,} characters a step, forward and "
        f"backward; median of {args.rounds}"
    )
    print(f"{'cell':8} {'hidden':>6} {'params':>10} " + " ".join(f"{'T=' + str(t):>17}" for t in lengths))
    base: dict[int, float] = {}
    for cell in CELLS:
        hidden = args.hidden if cell == "lstm" else matched_hidden(cell, target, args.layers)
        module = stack(cell, hidden, args.layers).train()
        cols = []
        for T in lengths:
            rate = timed(module, hidden, T, args.chars, args.rounds)
            base.setdefault(T, rate)
            cols.append(f"{rate:>9,.0f} ({rate / base[T]:.2f}x)")
        print(f"{cell:8} {hidden:>6} {count(module):>10,} " + " ".join(cols))


if __name__ == "__main__":
    main()
