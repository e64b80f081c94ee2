"""``chargen eval``: the loss of a text file, or of the run's own validation or test split, under its model."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import ChargenError
from .args import add_backend_arg, add_json, add_load_args, positive_int

HELP = "loss of a text file, or of the run's validation or test split, under a run's model (nats/char, bpc)"
DESCRIPTION = None


def add_args(p: argparse.ArgumentParser) -> None:
    """The flags of ``chargen eval``: the run, FILE or ``--split`` and where that split's corpus is."""
    add_load_args(p)
    p.add_argument("file", metavar="FILE", nargs="?", default=None, help="a text file to score")
    p.add_argument(
        "--split",
        choices=("val", "test"),
        default=None,
        help="score the run's own corpus split instead: every character, exactly as validation "
        "reads it (from the prepared cache, or prepared again from the source)",
    )
    p.add_argument(
        "--source",
        default=None,
        metavar="SOURCE",
        help="with --split: where the run's corpus is now, if not where it was trained from",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        metavar="N",
        help="with --split: segments read side by side (default 32); the figure does not depend on it",
    )
    p.add_argument(
        "--corpora-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="with --split: folder searched first for named corpora (repeatable)",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="where prepared corpora live (default $CHARGEN_CACHE or ~/.cache/chargen)",
    )
    add_backend_arg(p, "torch when it is installed (it reads a whole text faster), else numpy")
    add_json(p)


def run(args: argparse.Namespace) -> int:
    """Score FILE or the split and print characters, nats/char and bits/char."""
    from ..generate.sampler import Sampler

    if (args.file is None) == (args.split is None):
        raise ChargenError("give a FILE to score, or --split val|test for the run's own corpus (not both)")
    if args.split is None and (args.source is not None or args.batch_size is not None):
        raise ChargenError("--source and --batch-size go with --split; to score a file, pass only FILE")
    sampler = Sampler.load(args.run, device=args.device, checkpoint=args.checkpoint, backend=eval_backend(args))
    if args.file is not None:
        score, what = sampler.score_file(args.file), args.file
        result = {"run": args.run, "file": args.file}
    else:
        from ..runs.corpus import run_corpus
        from ..runs.folder import open_run_dir

        corpus = run_corpus(
            open_run_dir(args.run), args.source, corpora_dirs=args.corpora_dir, cache_dir=args.cache_dir
        )
        score = sampler.score_split(corpus, args.split, batch_size=args.batch_size or 32, progress=sys.stderr.isatty())
        what = f"{args.split} split of {corpus.meta['source']}"
        result = {"run": args.run, "split": args.split}
    result.update(chars=score.count, nats=score.nats, bpc=score.bpc)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{what}: {score.count:,} characters, {score.nats:.4f} nats/char ({score.bpc:.4f} bpc)")
    return 0


def eval_backend(args: argparse.Namespace) -> str:
    """Scoring reads whole sequences, which torch does in one call per layer: ``auto`` is torch when it is
    installed (NumPy otherwise); ``--split`` needs torch."""
    from ..generate.backends import resolve_backend, torch_installed

    if args.split is not None and args.backend == "numpy":
        raise ChargenError("--split runs on the torch backend; leave out --backend numpy")
    if args.split is not None and not torch_installed():
        raise ChargenError(
            '--split needs PyTorch, which is not installed here: pip install "chargen[train]" '
            "(scoring a FILE works without it)"
        )
    if args.backend == "auto" and (torch_installed() or args.split is not None):
        return resolve_backend("torch", args.device)
    return resolve_backend(args.backend, args.device)
