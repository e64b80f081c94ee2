"""``chargen sample``: a run's continuation of a prompt, streamed to stdout as it is generated."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..config.options import add_flags, given
from ..errors import ChargenError
from .args import WholeNumber, add_backend_arg, add_load_args

if TYPE_CHECKING:
    from ..config import SampleOptions
    from ..generate.sampler import Sampler

HELP = "generate text from a trained run"
DESCRIPTION = "Print the prompt and its continuation to stdout as it is generated."


def add_args(p: argparse.ArgumentParser) -> None:
    """The flags of ``chargen sample``: the run, the backend, the prompt and the SampleOptions."""
    from ..config import SampleOptions

    add_load_args(p)
    add_backend_arg(p, "numpy on the CPU, where it is faster, torch on another device")
    p.add_argument("--prompt", default=None, help="text to continue (\\n, \\t escapes allowed); default: none")
    p.add_argument("--prompt-file", default=None, metavar="F", help="read the prompt from a UTF-8 file")
    add_flags(p, SampleOptions)
    novelty = p.add_argument_group("novelty (needs the run's training text and chargen[novelty])")
    novelty.add_argument(
        "--novelty",
        action="store_true",
        help="after each sample, say on stderr its longest stretch also found in the training text",
    )
    novelty.add_argument(
        "--max-copy",
        type=WholeNumber(0, 1 << 40),
        metavar="N",
        help="draw a sample again while it copies more than N characters of the training text",
    )
    novelty.add_argument(
        "--max-tries", type=WholeNumber(1, 1000), metavar="T", help="draws per sample under --max-copy (default 10)"
    )


def run(args: argparse.Namespace) -> int:
    """Print the prompt and its continuation: one streamed sample, or n samples each under a header."""
    from ..config import SampleOptions
    from ..generate.sampler import Sampler

    prompt = _prompt(args)
    settings = given(args, SampleOptions)
    settings["stop"] = tuple(_unescape(s) for s in settings.get("stop", ()))
    options = SampleOptions(**settings)
    if options.beam is not None and args.max_copy is not None:
        raise ChargenError("--max-copy draws a sample again, and a beam search draws nothing: drop one of them")
    if args.max_tries is not None and args.max_copy is None:
        raise ChargenError("--max-tries counts the draws of --max-copy; pass --max-copy N with it")
    sampler = Sampler.load(args.run, device=args.device, checkpoint=args.checkpoint, backend=args.backend)
    if args.novelty or args.max_copy is not None:
        return _novel(sampler, prompt, options, args.max_copy, args.max_tries or 10)
    out = sys.stdout
    if options.beam is not None or (options.best_of or 1) > options.n:
        return _searched(sampler, prompt, options)
    if options.n == 1:
        pieces = sampler.stream(prompt, options)  # validates before anything is printed
        out.write(prompt + next(pieces, ""))
        out.flush()
        for piece in pieces:
            out.write(piece)
            out.flush()
        out.write("\n")
        out.flush()
        return 0
    for i, text in enumerate(sampler.generate(prompt, options)):
        out.write(f"{chr(10) if i else ''}----- sample {i + 1} of {options.n} -----\n")
        out.write(prompt + text + "\n")
    out.flush()
    return 0


def _novel(sampler: Sampler, prompt: str, options: SampleOptions, max_copy: int | None, tries: int) -> int:
    """Whole samples (not streamed: one may be drawn again), each followed on stderr by its longest copy."""
    from ..generate.novelty import generate_novel

    results = generate_novel(sampler, prompt, options, max_copy, tries)
    for i, r in enumerate(results):
        if options.n > 1:
            sys.stdout.write(f"{chr(10) if i else ''}----- sample {i + 1} of {options.n} -----\n")
        sys.stdout.write(prompt + r.text + "\n")
        sys.stdout.flush()
        which = f"sample {i + 1}: " if options.n > 1 else ""
        drawn = f" (draw {r.tries})" if r.tries > 1 and r.met else ""
        said = f"novelty: {which}longest stretch also in the training text: {r.copied:,} characters, from its character {r.offset:,}{drawn}"
        if not r.met:
            said += f"; every one of {r.tries} draws copied more than {max_copy:,}: this is the least copied"
        print(said, file=sys.stderr, flush=True)
    return 0


def _searched(sampler: Sampler, prompt: str, options: SampleOptions) -> int:
    """Whole texts chosen by a beam or best-of-N, each followed on stderr by its total log-probability."""
    from ..generate.search import beam_search, best_of

    found = (beam_search if options.beam is not None else best_of)(sampler, prompt, options)
    how = f"beam of {options.beam}" if options.beam is not None else f"best {options.n} of {options.best_of}"
    for i, (text, total) in enumerate(found):
        if options.n > 1:
            sys.stdout.write(f"{chr(10) if i else ''}----- sample {i + 1} of {options.n} -----\n")
        sys.stdout.write(prompt + text + "\n")
        sys.stdout.flush()
        which = f"sample {i + 1}: " if options.n > 1 else ""
        print(f"{how}: {which}log-probability {total:.2f} nats over {len(text):,} characters", file=sys.stderr)
    return 0


def _unescape(text: str) -> str:
    """``\\n``, ``\\t``, ``\\r`` and ``\\\\`` in a flag value, so ``--stop '\\n\\n'`` means two newlines.

    By hand rather than with the ``unicode_escape`` codec, which decodes its input
    as Latin-1 (mangling any non-ASCII prompt) and would also expand ``\\x``,
    ``\\u`` and ``\\N{...}`` sequences that a user may mean literally.
    """
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "ntr\\":
            out.append({"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _prompt(args: argparse.Namespace) -> str:
    """The prompt: ``--prompt`` unescaped, or the text of ``--prompt-file``, or nothing."""
    if args.prompt is not None and args.prompt_file is not None:
        raise ChargenError("pass --prompt or --prompt-file, not both")
    if args.prompt_file is None:
        prompt = _unescape(args.prompt) if args.prompt is not None else ""
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:  # bytes that were not UTF-8 reach Python as lone surrogates
            raise ChargenError("--prompt is not valid UTF-8; pass UTF-8 text") from None
        return prompt
    try:
        with open(args.prompt_file, encoding="utf-8-sig") as f:  # a leading BOM (Windows editors) is not text
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ChargenError(f"cannot read prompt file {args.prompt_file}: {getattr(e, 'strerror', None) or e}") from None
