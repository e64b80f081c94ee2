"""Argument helpers that several subcommands share: where a corpus is, which run to load, ``--json``,
and argparse types for bounded whole numbers."""

from __future__ import annotations

import argparse

from ..config.options import add_flags

SOURCE_HELP = (
    "a text file, folder, glob, corpus name (tinyshakespeare, pystdlib) or hf:NAME; "
    "default: pystdlib, the running Python's standard library"
)


class WholeNumber:
    """An argparse type: a whole number in [low, high]."""

    __name__ = "int"  # what argparse calls the type in its own messages

    def __init__(self, low: int, high: int):
        self.low, self.high = low, high

    def __call__(self, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not self.low <= value <= self.high:
            raise argparse.ArgumentTypeError(f"must be in [{self.low}, {self.high}], got {value}")
        return value


positive_int = WholeNumber(1, 1 << 20)


def add_source_args(p: argparse.ArgumentParser) -> None:
    """SOURCE, the PrepareOptions flags and where corpora are looked for and cached."""
    from ..config import PrepareOptions

    p.add_argument("source", nargs="?", default=None, metavar="SOURCE", help=SOURCE_HELP)
    add_flags(p, PrepareOptions)
    p.add_argument(
        "--corpora-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="folder searched first for named corpora (repeatable; also $CHARGEN_CORPORA)",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="where prepared corpora and downloads live (default $CHARGEN_CACHE or ~/.cache/chargen)",
    )


def add_load_args(p: argparse.ArgumentParser) -> None:
    """RUN, and which device and checkpoint to load it on."""
    p.add_argument("run", metavar="RUN")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, mps")
    p.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        default="best",
        help="best weights by validation loss (default) or the last checkpoint",
    )


def add_backend_arg(p: argparse.ArgumentParser, default_help: str) -> None:
    """``--backend``; default_help says what ``auto`` picks for this subcommand."""
    p.add_argument(
        "--backend",
        choices=("auto", "torch", "numpy"),
        default="auto",
        help=f"what runs the model: numpy (CPU only, no torch needed) or torch; auto (default): {default_help}",
    )


def add_json(p: argparse.ArgumentParser) -> None:
    """``--json``: the result as one JSON object."""
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
