"""``chargen export``: a run's model as one ONNX step, with its vocabulary (onnx, the ``export`` extra)."""

from __future__ import annotations

import argparse
import json

from .args import add_json

HELP = "write a run's model as one ONNX step (model.onnx), with its vocabulary, for apps in any language"
DESCRIPTION = None


def add_args(p: argparse.ArgumentParser) -> None:
    """The flags of ``chargen export``."""
    p.add_argument("run", metavar="RUN")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="DIR",
        help="folder to write model.onnx, tokenizer.json and chargen.json into (new or empty)",
    )
    p.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        default="best",
        help="best weights by validation loss (default) or the last checkpoint",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in DIR")
    add_json(p)


def run(args: argparse.Namespace) -> int:
    """Export the run and say what was written where."""
    from ..generate.export import export

    out = export(args.run, args.output, checkpoint=args.checkpoint, overwrite=args.overwrite)
    if args.json:
        print(
            json.dumps({"run": args.run, "output": str(out), "files": ["model.onnx", "tokenizer.json", "chargen.json"]})
        )
    else:
        print(f"exported {args.run} ({args.checkpoint} weights) to {out}: model.onnx, tokenizer.json, chargen.json")
    return 0
