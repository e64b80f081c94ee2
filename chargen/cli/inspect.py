"""``chargen inspect``: what the network sees reading a text (surprise, guesses, units, features, gates)."""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from ..errors import ChargenError
from .args import WholeNumber, add_backend_arg, add_load_args

HELP = "show what a run's network sees reading a text: surprise, guesses, units, gates"
DESCRIPTION = (
    "Read a text with a run's model and show each character's surprise (in the terminal, shaded), or write "
    "everything as JSON or as one self-contained HTML page: log-probabilities, top guesses, unit activations, the units that track simple "
    "features of the text, and gate saturation."
)


def add_args(p: argparse.ArgumentParser) -> None:
    add_load_args(p)
    add_backend_arg(p, "numpy on the CPU, torch on another device")
    p.add_argument("text", nargs="?", metavar="TEXT", help="the text to read (\\n, \\t escapes allowed)")
    p.add_argument("--file", metavar="F", help="read the text from a UTF-8 file instead")
    p.add_argument(
        "--format",
        choices=("ansi", "json", "html"),
        default="ansi",
        help="ansi (default): the shaded text; json; html: one self-contained page (with -o)",
    )
    p.add_argument("-o", "--output", metavar="PATH", help="write to PATH instead of stdout (- for stdout)")
    p.add_argument("--top", type=WholeNumber(1, 100), default=5, metavar="K", help="guesses listed per position (5)")
    p.add_argument("--layers", type=_numbers, metavar="L", help="layers whose units to keep, such as 0,2 (all)")
    p.add_argument("--units", type=_numbers, metavar="U", help="units of each to keep: 0-31,40 or none (all)")
    p.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="shade the text: on a terminal (auto), always, or never",
    )


MAX_FILE = 1 << 26  # characters read from --file: 64M (a text of 1M took 85 s)
MAX_NUMBER = 1 << 20  # no model has more layers or units than this


def _numbers(text: str) -> list[int]:
    """``0-3,7`` -> [0, 1, 2, 3, 7]; ``none`` -> []."""
    if text.strip().lower() == "none":
        return []
    out: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not _digits(lo) or (dash and not _digits(hi)):
            raise argparse.ArgumentTypeError(f"expected numbers and ranges such as 0-31,40 (or none), got {text!r}")
        if max(int(lo), int(hi) if dash else 0) >= MAX_NUMBER:
            raise argparse.ArgumentTypeError(f"numbers go up to {MAX_NUMBER - 1:,}, got {part.strip()!r}")
        if dash and int(hi) < int(lo):
            raise argparse.ArgumentTypeError(f"a range must go up, such as 3-7, got {part.strip()!r}")
        out.extend(range(int(lo), int(hi) + 1) if dash else [int(lo)])
        if len(out) > MAX_NUMBER:
            raise argparse.ArgumentTypeError(f"at most {MAX_NUMBER:,} numbers, got more in {text!r}")
    return out


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 12


def run(args: argparse.Namespace) -> int:
    """Inspect the text; print the shaded text (and a legend), or write the JSON or the page."""
    from ..generate.report import MAX_HTML, ansi, html_pieces, json_pieces, legend
    from ..generate.sampler import Sampler
    from .sample import _unescape

    text = _text(args, _unescape)
    if args.format == "html" and args.output is None:
        raise ChargenError("--format html writes a page: give its path with -o PATH (such as -o report.html)")
    if args.format == "html" and len(text) > MAX_HTML:
        raise ChargenError(
            f"--format html shows at most {MAX_HTML:,} characters (a browser slows past that) and this text has "
            f"{len(text):,}: inspect a part of it, or write --format json"
        )
    output = None if args.output in (None, "-") else _output(args.output, args.file, args.run)
    sampler = Sampler.load(args.run, device=args.device, checkpoint=args.checkpoint, backend=args.backend)
    found = sampler.inspect(text, top=args.top, layers=args.layers, units=args.units)
    pieces: Iterable[str]
    if args.format == "json":
        pieces = itertools.chain(json_pieces(found), ["\n"])
    elif args.format == "html":
        pieces = html_pieces(found, f"{Path(args.run).resolve().name}: what the network sees")
    else:
        color = args.color == "always" or (args.color == "auto" and output is None and sys.stdout.isatty())
        pieces = [(legend() + "\n" + ansi(found) if color else "".join(found.chars)) + "\n"]
    if output is None:
        sys.stdout.writelines(pieces)
        return 0
    from ..files import write_pieces

    try:
        write_pieces(output, pieces)
    except OSError as e:
        raise ChargenError(f"cannot write {args.output}: {e.strerror or e}") from None
    nats = -float(found.logprobs.mean())
    print(f"wrote {args.output}: {len(found.chars):,} characters, {nats:.4f} nats/char", file=sys.stderr)
    return 0


def _output(path: str, source: str | None, run: str) -> Path:
    """Where -o writes: a link followed to its target; never the text read, nor a file of the run."""
    if not path.strip():
        raise ChargenError("-o needs a file name, such as -o report.html (or -o - for stdout)")
    out = Path(path).resolve()
    if out.is_dir():
        raise ChargenError(f"-o {path} is a folder: give a file name inside it, such as {Path(path) / 'report.html'}")
    if source is not None and out == Path(source).resolve():
        raise ChargenError(f"-o {path} is the text being read: write to another file")
    if out.is_relative_to(Path(run).resolve()):
        raise ChargenError(f"-o {path} is inside the run folder {run}: write the report elsewhere")
    return Path(path)


def _text(args: argparse.Namespace, unescape: Callable[[str], str]) -> str:
    if (args.text is None) == (args.file is None):
        raise ChargenError("give the text to read, or --file F (one of them)")
    if args.file is None:
        return unescape(args.text)
    try:
        with open(args.file, encoding="utf-8-sig", newline="") as f:  # \r kept: the text eval would score
            text = f.read(MAX_FILE + 1)
    except UnicodeDecodeError as e:
        raise ChargenError(
            f"cannot read {args.file}: not UTF-8 ({e.reason} at byte {e.start}); save it as UTF-8"
        ) from None
    except OSError as e:
        raise ChargenError(f"cannot read {args.file}: {e.strerror or e}") from None
    if len(text) > MAX_FILE:
        raise ChargenError(
            f"{args.file} has more than {MAX_FILE:,} characters: inspect a part of it (such as with head -c)"
        )
    return text
