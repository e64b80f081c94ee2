"""``chargen info``: what a run is and how far it got."""

from __future__ import annotations

import argparse
import json

from .args import add_json

HELP = "describe a run: config, size, progress, best validation loss"
DESCRIPTION = None


def add_args(p: argparse.ArgumentParser) -> None:
    """The flags of ``chargen info``."""
    p.add_argument("run", metavar="RUN")
    add_json(p)


def run(args: argparse.Namespace) -> int:
    """Print the run's description: a few lines, or one JSON object."""
    from ..config import CELL_NAMES
    from ..runs.info import run_info

    info = run_info(args.run)
    if args.json:
        print(json.dumps(info))
        return 0
    m, t = info["model"], info["train"]
    head = f", adaptive softmax (cutoffs {','.join(map(str, m['cutoffs']))})" if m.get("softmax") == "adaptive" else ""
    print(
        f"{info['run']}: {CELL_NAMES.get(m['cell'], m['cell'])} {m['num_layers']}x{m['hidden_size']}, "
        f"{info['parameters']:,} parameters, vocabulary {m['vocab_size']}{head}"
    )
    print(f"  corpus: {info['corpus']['source']} ({info['corpus']['chars']:,} characters)")
    print(
        f"  trained: {info['steps']} steps, {info['elapsed']:.0f}s; batch {t['batch_size']} x bptt {t['bptt']}, "
        f"lr {t['lr']}, {t['schedule']} schedule"
    )
    if info["best_val_loss"] is not None:
        print(
            f"  best validation: {info['best_val_loss']:.4f} nats/char ({info['best_val_bpc']:.4f} bpc) "
            f"at step {info['best_step']}"
        )
    init = info.get("init")
    if init:
        best = "" if init.get("best_val_loss") is None else f", best val {init['best_val_loss']:.4f} nats/char"
        vocab = (
            f"{init['unknown_chars']:,} characters read as <unk> (--keep-vocab)"
            if init.get("keep_vocab")
            else f"{init.get('added_chars', 0)} characters added to its {init['vocab_size']}"
            + (f", {init['unknown_chars']:,} read as <unk>" if init.get("unknown_chars") else "")
        )
        print(
            f"  fine-tuned from: {init['from']} ({init['checkpoint']} weights, step {init['step']}{best}; "
            f"corpus {init['corpus_fingerprint'][:12]}); {vocab}"
        )
    return 0
