"""``chargen prepare``: a corpus decoded, split, its vocabulary built and its ids cached."""

from __future__ import annotations

import argparse
import json
import sys

from ..config.options import given
from .args import add_json, add_source_args

HELP = "build the vocabulary and cached ids of a corpus"
DESCRIPTION = (
    "Decode, normalize and split a corpus; build its character vocabulary from the training split; cache the ids."
)


def add_args(p: argparse.ArgumentParser) -> None:
    """The flags of ``chargen prepare``."""
    add_source_args(p)
    add_json(p)


def run(args: argparse.Namespace) -> int:
    """Prepare the corpus and print its summary."""
    from ..config import PrepareOptions
    from ..data.prepared import prepare

    corpus = prepare(
        args.source,
        corpora_dirs=args.corpora_dir,
        cache_dir=args.cache_dir,
        progress=not args.json and sys.stderr.isatty(),
        **given(args, PrepareOptions),
    )
    s = corpus.summary()
    if args.json:
        print(json.dumps(s))
        return 0
    state = "reused" if s["reused"] else "prepared"
    print(f"{state} {s['source']}: {s['chars']:,} characters, vocabulary of {s['vocab_size']}")
    print(f"  split: train {s['train_chars']:,} / val {s['val_chars']:,} / test {s['test_chars']:,}")
    if s["unknown_chars"]:
        print(f"  unknown characters (outside the vocabulary): {s['unknown_chars']:,} {s['unknown_by_split']}")
    print(f"  cache: {s['cache_dir']}  (fingerprint {s['fingerprint'][:12]})")
    return 0
