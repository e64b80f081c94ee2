"""Benchmark what durability costs: one checkpoint (last/ written and swapped in) with and without fsync.

Usage::

    python scripts/bench_checkpoint.py            # the cpu preset's GRU 2x320 and a 3x1024 LSTM

For each model, the median time of ``checkpoint.save_last`` over several rounds,
with fsync of every file and folder (what chargen does) and without (a baseline
measured in the same run, alternating).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch

from chargen import files
from chargen.config import ModelConfig
from chargen.model.network import CharRNN
from chargen.runs.checkpoint import ResumeState, save_last


def one(model, optimizer, scaler, folder: Path, durable: bool) -> float:
    files.DURABLE = durable
    t = time.perf_counter()
    save_last(folder, model, optimizer, scaler, ResumeState(step=1, rng={"rng_cpu": torch.get_rng_state()}))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    for name, cfg in (
        ("GRU 2x320 (cpu preset)", dict(cell="gru", num_layers=2, hidden_size=320, embedding_size=64)),
        ("LSTM 3x1024 (gpu preset)", dict(cell="lstm", num_layers=3, hidden_size=1024)),
    ):
        model = CharRNN(ModelConfig(vocab_size=65, **cfg))
        optimizer = torch.optim.AdamW(model.parameters())
        model(torch.zeros(1, 2, dtype=torch.long))[0].sum().backward()
        optimizer.step()  # so that the moments exist and are saved
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        timings = {True: [], False: []}
        with tempfile.TemporaryDirectory(dir=REPO) as d:  # on the disk runs live on, not a tmpfs
            for r in range(args.rounds):
                for durable in (True, False) if r % 2 == 0 else (False, True):
                    timings[durable].append(one(model, optimizer, scaler, Path(d), durable))
        mb = sum(p.numel() for p in model.parameters()) * 4 * 3 / 1e6
        a, b = statistics.median(timings[True]), statistics.median(timings[False])
        print(
            f"{name}: {mb:,.0f} MB per checkpoint; with fsync {a * 1000:,.1f} ms, without {b * 1000:,.1f} ms "
            f"(median of {args.rounds}); durability costs {(a - b) * 1000:,.1f} ms per checkpoint"
        )
    files.DURABLE = True


if __name__ == "__main__":
    main()
