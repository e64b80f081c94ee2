"""``chargen plot``: runs' loss curves drawn into one PNG (matplotlib, the ``plot`` extra)."""

from __future__ import annotations

import argparse
import sys

HELP = "draw runs' loss curves into a PNG: validation bpc and training loss, resumes and best checkpoints"
DESCRIPTION = None


def add_args(p: argparse.ArgumentParser) -> None:
    """The flags of ``chargen plot``."""
    p.add_argument("runs", metavar="RUN", nargs="+", help="run folders, drawn together")
    p.add_argument(
        "-o", "--output", default="curves.png", metavar="FILE.png", help="the PNG to write (default curves.png)"
    )
    p.add_argument(
        "--x",
        choices=("step", "time", "chars"),
        default="step",
        help="against steps (default), wall-clock minutes or millions of characters seen",
    )


def run(args: argparse.Namespace) -> int:
    """Draw the curves and say where the PNG went (on stderr: stdout stays free)."""
    from ..runs.plot import plot

    out = plot(args.runs, args.output, x=args.x)
    print(f"chargen plot: wrote {out}", file=sys.stderr)
    return 0
