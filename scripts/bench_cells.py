"""Training throughput of each recurrent cell at the LSTM's parameter count, by window length (issue 36).

Usage::

    python scripts/bench_cells.py                       # as an LSTM 2x256 CharRNN; T = 64, 256, 1024
    python scripts/bench_cells.py --hidden 512 --rounds 5 --chars 32768
    python scripts/bench_cells.py --device cuda --chars 65536      # on a GPU (scripts/gpu_check.sh runs it)

For each cell, a whole ``CharRNN`` (65 characters, the embedding as wide as the state, a full softmax) at the
hidden size whose parameter count (``ModelConfig.num_parameters``) is nearest the LSTM's. A min cell is timed
both ways it can solve a window: ``recurrence`` (the loop with its written-out backward, what a CPU runs) and
``scan`` (the parallel scan in log space, what a GPU runs). Each step is what training does: forward, loss,
backward and an AdamW step over ``--chars`` characters cut into windows of T (batch = chars / T), on this
machine's CPU threads or ``--device``, in float32 (TF32 off). Median over ``--rounds`` after one warm-up, in characters per second, and each against
the LSTM at the same T (measured in the same run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chargen.config import ModelConfig
from chargen.model.minrnn import MinRNN
from chargen.model.network import CharRNN

VOCAB = 65  # tiny shakespeare's characters
ROWS = (
    ("lstm", None),
    ("gru", None),
    ("rnn", None),
    ("mingru", "recurrence"),
    ("mingru", "scan"),
    ("minlstm", "recurrence"),
    ("minlstm", "scan"),
)


def config(cell: str, hidden: int, layers: int) -> ModelConfig:
    return ModelConfig(vocab_size=VOCAB, cell=cell, num_layers=layers, hidden_size=hidden)


def matched_hidden(cell: str, target: int, layers: int) -> int:
    """The hidden size (a multiple of 8) whose model's parameter count is nearest ``target``."""
    return min(range(8, 4097, 8), key=lambda h: abs(config(cell, h, layers).num_parameters - target))


def timed(model: CharRNN, T: int, chars: int, rounds: int, device: torch.device) -> float:
    B = max(1, chars // T)
    ids = torch.randint(0, VOCAB, (B, T + 1), generator=torch.Generator().manual_seed(0)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rates = []
    for r in range(rounds + 1):
        t0 = time.perf_counter()
        loss, _ = model(ids[:, :-1], targets=ids[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
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
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # float32 products everywhere
    torch.manual_seed(0)
    target = config("lstm", args.hidden, args.layers).num_parameters
    lengths = [int(t) for t in args.lengths.split(",")]
    print(
        f"torch {torch.__version__}, {_where(device)}; CharRNN {args.layers} layers, parameters "
        f"nearest the LSTM {args.layers}x{args.hidden}'s {target:,}; {args.chars:,} characters a step (forward, "
        f"loss, backward, AdamW); median of {args.rounds}"
    )
    print(f"{'cell':20} {'hidden':>6} {'params':>10} " + " ".join(f"{'T=' + str(t):>17}" for t in lengths))
    base: dict[int, float] = {}
    for cell, method in ROWS:
        hidden = args.hidden if cell == "lstm" else matched_hidden(cell, target, args.layers)
        model = CharRNN(config(cell, hidden, args.layers)).to(device).train()
        if isinstance(model.rnn, MinRNN) and method:
            model.rnn.method = method
        cols = []
        for T in lengths:
            rate = timed(model, T, args.chars, args.rounds, device)
            base.setdefault(T, rate)
            cols.append(f"{rate:>9,.0f} ({rate / base[T]:.2f}x)")
        name = f"{cell} ({method})" if method else cell
        print(f"{name:20} {hidden:>6} {model.num_parameters:>10,} " + " ".join(cols))


def _where(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, TF32 off"
    return f"{torch.get_num_threads()} CPU threads"


if __name__ == "__main__":
    main()
