"""Benchmark the trainer's overhead: chargen's chars/s against a bare nn.LSTM or nn.GRU loop.

Usage::

    python scripts/bench_train.py                        # the cpu preset's shapes, 5 rounds
    python scripts/bench_train.py --precision fp32       # the same in float32 (auto: as chargen train resolves it)
    python scripts/bench_train.py --preset gpu --device cuda --steps 200

Both sides train the same shapes on the same corpus for the same number of
steps: embedding -> nn.LSTM/GRU -> linear, AdamW, global-norm clipping,
stateful streams with the state detached between batches, under the same
autocast precision and weight decay. The bare loop is
the minimum any trainer must do; chargen adds its schedule, the non-finite
guard, logging and metrics (evaluation and checkpoints are pushed past the
end so that both time the same work). Rounds alternate the two sides;
reported are the medians and the ratio chargen / bare (target: >= 0.95).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch
import torch.nn as nn
import torch.nn.functional as F

from chargen.config import PRESETS
from chargen.data.prepared import prepare
from chargen.errors import ChargenError
from chargen.model.devices import resolve_device
from chargen.model.precision import precision_plan, resolve_precision, tf32


def corpus_source() -> tuple[str, list[str]]:
    dirs = [d for d in os.environ.get("CHARGEN_CORPORA", "").split(os.pathsep) if d]
    dirs.append(str(REPO.parent / "shared" / "corpora"))
    for d in dirs:
        if (Path(d) / "tinyshakespeare.txt").is_file():
            return "tinyshakespeare", [d]
    return "pystdlib", []


def bare_loop(
    ids: torch.Tensor, V: int, cfg: dict, steps: int, warmup: int, device: torch.device, precision: str
) -> float:
    """chars/s of the plainest stateful TBPTT loop."""
    B, T, H, L = cfg["batch_size"], cfg["bptt"], cfg["hidden_size"], cfg["num_layers"]
    E = cfg.get("embedding_size") or H
    torch.manual_seed(0)
    rnn_cls = nn.LSTM if cfg["cell"] == "lstm" else nn.GRU
    emb, rnn, head = (
        nn.Embedding(V, E),
        rnn_cls(E, H, L, batch_first=True, dropout=cfg.get("dropout", 0.0)),
        nn.Linear(H, V),
    )
    drop = nn.Dropout(cfg.get("dropout", 0.0))
    params = [*emb.parameters(), *rnn.parameters(), *head.parameters()]
    for m in (emb, rnn, head):
        m.to(device)
    fused = {"fused": True} if device.type == "cuda" else {}  # what any CUDA trainer should use, as chargen does
    opt = torch.optim.AdamW(params, lr=cfg["lr"], betas=(0.9, 0.99), weight_decay=cfg.get("weight_decay", 0.0), **fused)
    # The same dtypes as chargen (precision.precision_plan): under CUDA bf16 the RNN runs in float32 (TF32),
    # since autocast would feed cuDNN's RNN fp16 with no scaler; fp16 scales the loss.
    plan = precision_plan(device.type, precision)
    scaler = torch.amp.GradScaler(device.type, enabled=plan.grad_scaler)
    S = (ids.numel() - 1) // B
    x_all = ids[: B * S].view(B, S).to(device)
    y_all = ids[1 : B * S + 1].view(B, S).to(device)
    state = None
    t0 = None
    for step in range(steps + warmup):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        k = step % (S // T)
        x, y = x_all[:, k * T : (k + 1) * T], y_all[:, k * T : (k + 1) * T]
        if k == 0:
            state = None
        with torch.autocast(device.type, dtype=plan.autocast, enabled=plan.autocast is not None):
            if plan.rnn_autocast:
                out, state = rnn(emb(x), state)
            else:
                with torch.autocast(device.type, enabled=False):
                    out, state = rnn(emb(x).float(), state)
            loss = F.cross_entropy(head(drop(out)).float().flatten(0, 1), y.flatten())
        state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(opt)
        scaler.update()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * B * T / (time.perf_counter() - t0)


def chargen_loop(
    source: str, dirs: list[str], cfg: dict, steps: int, warmup: int, device: str, cache: str, precision: str
) -> float:
    """chars/s of chargen's trainer over the same steps (warmup steps excluded)."""
    from chargen.training.launch import open_run
    from chargen.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        opts = dict(
            cfg,
            max_steps=steps + warmup,
            eval_every=10**9,
            checkpoint_every=10**9,
            log_every=50,
            preview_chars=0,
            device=device,
            warmup_steps=0,
            precision=precision,
        )
        run = open_run(source, out=Path(tmp) / "run", corpora_dirs=dirs, cache_dir=cache, options=opts)
        trainer = Trainer(run, show_bar=False)
        trainer._evaluate = lambda row, final=False: True  # time training, not the final evaluation
        trainer._checkpoint = lambda: None
        times = []
        original = trainer.train_step

        def timed(step):
            if step == warmup:
                if trainer.device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter())
            return original(step)

        trainer.train_step = timed
        trainer.fit()
        run.close()
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - times[0]
    return steps * cfg["batch_size"] * cfg["bptt"] / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    ap.add_argument("--steps", type=at_least(1), default=60)
    ap.add_argument("--warmup", type=at_least(0), default=5)
    ap.add_argument("--rounds", type=at_least(1), default=5)
    ap.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda", "mps"))
    ap.add_argument(
        "--precision",
        default=None,
        choices=("auto", "fp32", "bf16", "fp16"),
        help="default: the preset's, else auto (as chargen train resolves it)",
    )
    args = ap.parse_args()
    try:
        device = resolve_device(args.device)
        precision = resolve_precision(
            args.precision or PRESETS[args.preset].get("precision", "auto"),
            device,
            PRESETS[args.preset].get("cell", "lstm"),
        )
    except ChargenError as e:
        ap.exit(2, f"{ap.prog}: error: {e}\n")
    cache = tempfile.mkdtemp()
    try:
        with tf32(device):  # both sides: chargen train allows TF32 on CUDA by default
            run(args, device, precision, cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def at_least(low: int):
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be a whole number of at least {low}, got {text!r}")
        return value

    return convert


def run(args, device: torch.device, precision: str, cache: str) -> None:
    source, dirs = corpus_source()
    corpus = prepare(source, corpora_dirs=dirs, cache_dir=cache)
    ids = torch.from_numpy(corpus.train.astype("int64"))
    cfg = {
        "cell": "lstm",
        "num_layers": 2,
        "hidden_size": 256,
        "dropout": 0.0,
        "lr": 2e-3,
        "batch_size": 64,
        "bptt": 128,
    }
    cfg.update(
        {
            k: v
            for k, v in PRESETS[args.preset].items()
            if k
            in (
                "cell",
                "num_layers",
                "hidden_size",
                "embedding_size",
                "dropout",
                "lr",
                "batch_size",
                "bptt",
                "weight_decay",
            )
        }
    )
    print(
        f"{source}, preset {args.preset}: {cfg}, {args.steps} timed steps, device {device}, {precision}, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    bare, ours = [], []
    for r in range(args.rounds):
        # alternate which side goes first, so neither always runs on a warmer (or cooler) machine
        if r % 2 == 0:
            bare.append(bare_loop(ids, len(corpus.vocab), cfg, args.steps, args.warmup, device, precision))
            ours.append(chargen_loop(source, dirs, cfg, args.steps, args.warmup, str(device), cache, precision))
        else:
            ours.append(chargen_loop(source, dirs, cfg, args.steps, args.warmup, str(device), cache, precision))
            bare.append(bare_loop(ids, len(corpus.vocab), cfg, args.steps, args.warmup, device, precision))
        print(f"round {r + 1}: bare {bare[-1]:,.0f} chars/s, chargen {ours[-1]:,.0f} chars/s", flush=True)
    b, o = statistics.median(bare), statistics.median(ours)
    cell = "nn.LSTM" if cfg["cell"] == "lstm" else "nn.GRU"
    print(f"\nmedian: bare {cell} loop {b:,.0f} chars/s, chargen train {o:,.0f} chars/s; ratio {o / b:.3f}")
    # Each round's two runs sit side by side in time, so their ratio cancels most of the drift of a
    # shared machine; the median of those ratios is the steadier figure.
    paired = statistics.median(x / y for x, y in zip(ours, bare))
    print(f"median of the per-round ratios (chargen / bare): {paired:.3f}")


if __name__ == "__main__":
    main()
