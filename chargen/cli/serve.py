"""``chargen serve``: an OpenAI-compatible HTTP API over a run (starlette and uvicorn, the ``serve`` extra)."""

from __future__ import annotations

import argparse
import os

from ..errors import ChargenError
from .args import WholeNumber, add_backend_arg, add_load_args, positive_int

HELP = "serve a run over HTTP: an OpenAI-compatible completions API with continuous batching"
DESCRIPTION = None


def add_args(p: argparse.ArgumentParser) -> None:
    """The flags of ``chargen serve``: the run, where to listen, the limits, the key and the pacing."""
    add_load_args(p)
    add_backend_arg(p, "torch where it is installed, else numpy (the torch-free install serves)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=WholeNumber(0, 65535), default=8000, help="port (default 8000)")
    p.add_argument(
        "--max-batch", type=positive_int, default=256, metavar="N", help="rows decoded together (default 256)"
    )
    p.add_argument(
        "--max-length",
        type=positive_int,
        default=4096,
        metavar="N",
        help="most characters one completion may ask for (default 4096)",
    )
    p.add_argument(
        "--max-queued",
        type=positive_int,
        default=256,
        metavar="N",
        help="rows decoding or waiting beyond which requests get 429 (default 256)",
    )
    p.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help="require Authorization: Bearer KEY on /v1 routes (also $CHARGEN_API_KEY)",
    )
    p.add_argument(
        "--stream-interval",
        type=WholeNumber(0, 10_000),
        default=20,
        metavar="MS",
        help="a stream writes at most every MS milliseconds, what is ready in one chunk (default 20; "
        "0: every character)",
    )
    _add_cache_and_cors(p)
    p.add_argument(
        "--offer-browser",
        action="store_true",
        help="also serve the run's browser export at /web/, where visitors generate on their own machine "
        "(chargen export --web); it hands every visitor the weights, with no API key",
    )
    p.add_argument(
        "--threads",
        type=WholeNumber(1, 1024),
        default=None,
        metavar="N",
        help="torch threads of the decoding process (default: one fewer than the CPUs, at least 1)",
    )


def _add_cache_and_cors(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--prompt-cache",
        type=WholeNumber(0, 1 << 20),
        default=256,
        metavar="N",
        help="prompts whose state is kept, so that one sent again is not read again (default 256; 0: none)",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        type=origin,
        metavar="ORIGIN",
        help="a web origin (https://example.org) whose pages may call the API; repeatable (default: none)",
    )


def origin(text: str) -> str:
    """A web origin as browsers send it: ``scheme://host[:port]`` (a trailing slash dropped), or ``*`` (any)."""
    from urllib.parse import urlsplit

    if text == "*":
        return text
    try:
        parts = urlsplit(text.rstrip("/"))
        parts.port  # noqa: B018  # a bad port raises here
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
        raise argparse.ArgumentTypeError(
            f"must be an origin such as https://example.org or http://localhost:3000, got {text!r}"
        )
    return f"{parts.scheme}://{parts.netloc}".lower()  # as browsers send it


def run(args: argparse.Namespace) -> int:
    """Check the API key, then serve until stopped."""
    from ..serve.server import Limits, serve

    api_key = args.api_key if args.api_key is not None else os.environ.get("CHARGEN_API_KEY")
    if api_key is not None:
        where = "--api-key" if args.api_key is not None else "CHARGEN_API_KEY"
        if not api_key:
            raise ChargenError(f"{where} is empty: give a key, or leave it out to serve without one")
        if not all("!" <= c <= "~" for c in api_key):
            raise ChargenError(f"{where} must be printable ASCII without spaces (clients send it in a header)")
    limits = Limits(max_length=args.max_length, max_queued=args.max_queued)
    serve(
        args.run,
        host=args.host,
        port=args.port,
        device=args.device,
        checkpoint=args.checkpoint,
        backend=args.backend,
        api_key=api_key,
        max_batch=args.max_batch,
        limits=limits,
        threads=args.threads,
        stream_interval=args.stream_interval / 1000,
        prompt_cache=args.prompt_cache,
        cors_origins=args.cors_origin,
        offer_browser=args.offer_browser,
    )
    return 0
