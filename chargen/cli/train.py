"""``chargen train``: train an LSTM/GRU on a corpus (also under torchrun, one process per GPU)."""

from __future__ import annotations

import argparse

from ..config.options import add_flags, given
from .args import add_source_args

HELP = "train an LSTM/GRU language model on a corpus"
DESCRIPTION = (
    "Train with stateful truncated BPTT, gradient clipping, validation, checkpoints and exact resume. "
    "Ctrl-C saves a checkpoint."
)


def add_args(p: argparse.ArgumentParser) -> None:
    """The flags of ``chargen train``: the corpus's, the configs', and what to do with the run folder."""
    from ..config import PRESETS, ModelConfig, TrainConfig

    add_source_args(p)
    p.add_argument("--out", required=True, metavar="RUN", help="run folder to create (or resume)")
    add_flags(p, ModelConfig)
    add_flags(p, TrainConfig)
    r = p.add_argument_group("run")
    r.add_argument("--config", metavar="FILE.toml", help="options from a TOML file (keys are flag names)")
    r.add_argument("--preset", help=f"named options: {', '.join(PRESETS)}")
    r.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    r.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    r.add_argument(
        "--init-from",
        metavar="BASE_RUN",
        default=None,
        help="fine-tune: start from this run's weights and shape; characters it lacks are added to "
        "its vocabulary (peak lr: the base's, and warmup 20 steps, unless given)",
    )
    r.add_argument(
        "--init-checkpoint",
        choices=("best", "last"),
        default=None,
        help="the base's best weights (default) or its last checkpoint",
    )
    r.add_argument(
        "--keep-vocab",
        action="store_true",
        help="with --init-from: keep the base's vocabulary; other characters become <unk>",
    )
    r.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: when stderr is a terminal)",
    )


def run(args: argparse.Namespace) -> int:
    """Train (or resume, or fine-tune) and print one summary, from rank 0."""
    from ..config import OPTION_CLASSES
    from ..training.trainer import train

    options = {k: v for cls in OPTION_CLASSES for k, v in given(args, cls).items()}
    result = train(
        args.source,
        out=args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=args.progress,
        corpora_dirs=args.corpora_dir,
        cache_dir=args.cache_dir,
        config_file=args.config,
        preset=args.preset,
        init_from=args.init_from,
        init_checkpoint=args.init_checkpoint,
        keep_vocab=args.keep_vocab,
        **options,
    )
    if not result.main:  # one summary per run, from rank 0
        return 0
    if result.already_finished:  # a success with nothing to do
        print(result.finished_message())
        return 0
    best = (
        "no validation loss (no validation split, or no evaluation fitted in the time budget)"
        if result.best_val_loss is None
        else f"best val {result.best_val_loss:.4f} nats/char ({result.best_val_bpc:.4f} bpc)"
    )
    print(
        f"trained {result.steps} steps in {result.elapsed:.0f}s on {result.device}, {result.precision} "
        f"({result.chars_per_sec:,.0f} chars/s, "
        f"stopped: {result.stopped}); {best}"
    )
    print(f"run: {result.run_dir}   sample: chargen sample {result.run_dir}")
    return 0
