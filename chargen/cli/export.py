"""``chargen export``: a run's model as one ONNX step, with its vocabulary (onnx, the ``export`` extra), or
(``--web``) as a static folder that samples in the browser (the core install)."""

from __future__ import annotations

import argparse
import json

from .args import add_json

HELP = (
    "write a run's model as one ONNX step (model.onnx), with its vocabulary, for apps in any language; "
    "or with --web, as a static web page that generates in the browser"
)
DESCRIPTION = None


def add_args(p: argparse.ArgumentParser) -> None:
    """The flags of ``chargen export``."""
    p.add_argument("run", metavar="RUN")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "-o",
        "--output",
        metavar="DIR",
        help="folder to write model.onnx, tokenizer.json and chargen.json into (new or empty)",
    )
    where.add_argument(
        "--web",
        metavar="DIR",
        help="folder to write a page that generates in the browser into (new or empty): index.html, chargen.js, "
        "model.json, model.safetensors; serve it with any static file server",
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
    if args.web is not None:
        from ..generate import web_export

        out = web_export.export_web(args.run, args.web, checkpoint=args.checkpoint, overwrite=args.overwrite)
        files = sorted(web_export.FILES)
    else:
        from ..generate import export

        out = export.export(args.run, args.output, checkpoint=args.checkpoint, overwrite=args.overwrite)
        files = list(export.FILES)
    if args.json:
        print(json.dumps({"run": args.run, "output": str(out), "files": files}))
    else:
        print(f"exported {args.run} ({args.checkpoint} weights) to {out}: {', '.join(files)}")
        if args.web is not None:
            print(f"serve it with any static file server, such as: python -m http.server -d {out} -b 127.0.0.1")
    return 0
