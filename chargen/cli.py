"""The ``chargen`` command line: a thin layer over the library.

Usage::

    chargen prepare [SOURCE] [--json] ...     # text -> vocabulary + cached ids

Each subcommand parses its flags and calls one library function. Mistakes a
user can make (a ChargenError from the library, a bad flag) print one line on
stderr and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import ChargenError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and still exit status 2)."""

    def error(self, message: str):  # noqa: D401 - argparse's name
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (0.0 <= v < 1.0):
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return v


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="?", default=None, metavar="SOURCE",
                   help="a text file, folder, glob, corpus name (tinyshakespeare, pystdlib) or "
                        "hf:NAME; default: pystdlib, the running Python's standard library")
    p.add_argument("--val-fraction", type=_fraction, default=None, metavar="F",
                   help="share of the text, after the training part, that validates (default: the "
                        "corpus's registry split, else 0.1)")
    p.add_argument("--test-fraction", type=_fraction, default=None, metavar="F",
                   help="share at the very end held out for testing (default 0)")
    p.add_argument("--normalize", choices=("none", "nfc", "nfkc"), default="none",
                   help="Unicode normalization applied before anything else (default none)")
    p.add_argument("--lowercase", action="store_true", help="lowercase the text")
    p.add_argument("--min-char-count", type=_positive_int, default=1, metavar="N",
                   help="characters seen fewer than N times in training become the unknown token")
    p.add_argument("--encoding", default="utf-8", help="text encoding of the files (default utf-8)")
    p.add_argument("--errors", choices=("strict", "replace", "ignore"), default="strict",
                   help="what to do with undecodable bytes (default strict: stop with the offset)")
    p.add_argument("--text-column", default="text", metavar="COL",
                   help="column holding the text, for hf: sources (default text)")
    p.add_argument("--corpora-dir", action="append", default=[], metavar="DIR",
                   help="folder searched first for named corpora (repeatable; also $CHARGEN_CORPORA)")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="where prepared corpora and downloads live (default $CHARGEN_CACHE or ~/.cache/chargen)")


def _prepare_kwargs(args) -> dict:
    return dict(corpora_dirs=args.corpora_dir, cache_dir=args.cache_dir,
                val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                normalize=args.normalize, lowercase=args.lowercase,
                min_char_count=args.min_char_count, encoding=args.encoding,
                errors=args.errors, text_column=args.text_column)


def cmd_prepare(args) -> int:
    from .data import prepare

    corpus = prepare(args.source, progress=not args.json and sys.stderr.isatty(),
                     **_prepare_kwargs(args))
    s = corpus.summary()
    if args.json:
        print(json.dumps(s))
        return 0
    state = "reused" if s["reused"] else "prepared"
    print(f"{state} {s['source']}: {s['chars']:,} characters, vocabulary of {s['vocab_size']}")
    print(f"  split: train {s['train_chars']:,} / val {s['val_chars']:,} / test {s['test_chars']:,}")
    if s["unknown_chars"]:
        print(f"  unknown characters (outside the vocabulary): {s['unknown_chars']:,} "
              f"{s['unknown_by_split']}")
    print(f"  cache: {s['cache_dir']}  (fingerprint {s['fingerprint'][:12]})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="chargen", description="Character-level text generation with LSTM/GRU models.")
    parser.add_argument("--version", action="version", version=f"chargen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("prepare", help="build the vocabulary and cached ids of a corpus",
                       description="Decode, normalize and split a corpus; build its character "
                                   "vocabulary from the training split; cache the ids.")
    _add_source_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``chargen`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ChargenError as e:
        print(f"chargen {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"chargen {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `chargen sample ... | head` closes the pipe early; that is not an error.
        sys.stderr.close()
        return 0
