"""The ``chargen`` command line: a thin layer over the library.

Usage::

    chargen prepare [SOURCE] [--json] ...          # text -> vocabulary + cached ids
    chargen train [SOURCE] --out RUN [...]         # train an LSTM/GRU on it
    torchrun --nproc_per_node N -m chargen train ...   # the same on N processes (DDP)
    chargen sample RUN [--prompt TEXT] [...]       # generate text, streamed to stdout
    chargen eval RUN FILE | --split val|test       # loss of a text, or of a split, under the model
    chargen info RUN [--json]                      # what a run is and how far it got
    chargen serve RUN [--port 8000] [...]          # an OpenAI-compatible HTTP API over a run
    chargen plot RUN [RUN...] [-o curves.png]      # loss curves of runs in one PNG
    chargen export RUN -o DIR                      # the model as one ONNX step, for other runtimes
    chargen completion bash|zsh                    # a shell completion script

Each subcommand has its own module here: its flags and one function calling the
library. This module is ``main``: mistakes a user can make (a ChargenError from
the library, a bad flag) print one line on stderr and exit with status 2; a
missing optional extra says which one to install; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys

from ..errors import ChargenError, Interrupted
from .eval import eval_backend
from .parser import EXIT_USAGE, build_parser

# Modules of the optional extras, and the extra that installs each.
_EXTRAS = {
    "torch": "train",
    "datasets": "train",
    "starlette": "serve",
    "uvicorn": "serve",
    "matplotlib": "plot",
    "onnx": "export",
    "onnxruntime": "export",
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``chargen`` command; returns the exit status."""
    code = _main(argv)
    if argv is None:  # the work is done: a Ctrl-C now would only break the interpreter's exit, with a traceback
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if argv is None and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        # A process of a torchrun group leaves at once, its output flushed: after destroy_process_group,
        # torch's teardown at interpreter exit aborted one rank in about ten ("terminate called without an
        # active exception", measured on 2 CPU processes with gloo), failing a run whose work was done.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    return code


def _main(argv: list[str] | None) -> int:
    args = _parse(argv)
    try:
        if argv is None:  # the process itself: a kill cleans up like Ctrl-C
            _prepare_process(args)
        code = args.func(args)
        sys.stdout.flush()  # a full disk under `> FILE` fails here, inside the handlers below
        return code
    except ModuleNotFoundError as e:
        extra = _EXTRAS.get((e.name or "").partition(".")[0])
        if extra is None:
            raise
        extra = "serve" if args.command == "serve" else extra
        print(
            f"chargen {args.command}: error: this needs {e.name}, which is not installed: "
            f'pip install "chargen[{extra}]"',
            file=sys.stderr,
        )
        return EXIT_USAGE
    except ChargenError as e:
        print(f"chargen {args.command}: error: {e}", file=sys.stderr)
        _leave_process_group_quietly()
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        if argv is None:  # the process is exiting: a further Ctrl-C must not cut its shutdown short
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        if not isinstance(e, Interrupted):  # the trainer has already said what happened
            print(f"chargen {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `chargen sample ... | head` closes the pipe early; that is not an error.
        _discard_stdout()
        sys.stderr.close()
        return 0
    except OSError as e:
        if e.errno not in _STORAGE_ERRORS:
            raise
        return _cannot_write(args, e)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line parsed; a usage error exits 2 with one line."""
    parser = build_parser()
    given = sys.argv[1:] if argv is None else [str(a) for a in argv]
    root_flags = {s for a in parser._actions for s in a.option_strings}
    if given and given[0].startswith("-") and given[0] not in root_flags:  # not "COMMAND is required"
        parser.error(f"unrecognized arguments: {given[0]}")
    args, rest = parser.parse_known_args(argv)
    if rest and args.command == "eval" and args.file is None and len(rest) == 1 and not rest[0].startswith("-"):
        args.file = rest[0]  # FILE after an option (argparse fills the optional FILE only right after RUN)
    elif rest:
        parser.exit(
            EXIT_USAGE,
            f"chargen {args.command}: error: unrecognized arguments: {' '.join(rest)} "
            f"(see chargen {args.command} --help)\n",
        )
    return args


def _cannot_write(args: argparse.Namespace, e: OSError) -> int:
    """A storage error no stage turned into a ChargenError (stdout on a full disk, above all): one line."""
    where = e.filename or "the output"  # a write to stdout names no file
    print(
        f"chargen {args.command}: error: cannot write {where}: {e.strerror}; free some space or write "
        "elsewhere, and run it again",
        file=sys.stderr,
    )
    if e.filename is None:
        _discard_stdout()
    _leave_process_group_quietly()
    return EXIT_USAGE


# A full disk, a file-size or disk quota limit, an I/O error, a read-only file system: the user's to fix.
_STORAGE_ERRORS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO, errno.EROFS}


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's own flush at exit finds nothing to fail on."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # no real stdout (a test's capture): nothing is flushed at exit anyway
        pass


def _prepare_process(args: argparse.Namespace) -> None:
    """Make a kill clean up like Ctrl-C, and import numpy (and torch, when the command runs it) up front."""
    from ..signals import ctrl_c_deferred, stop_like_ctrl_c

    stop_like_ctrl_c()
    if args.command != "info":
        with ctrl_c_deferred():  # see ctrl_c_deferred: not inside numpy's or torch's initialisation
            import numpy  # noqa: F401

            if _uses_torch(args):
                import torch  # noqa: F401


def _uses_torch(args: argparse.Namespace) -> bool:
    """Whether the command will run torch (and so imports it up front), as far as it is installed."""
    from ..generate.backends import resolve_backend, torch_installed

    if not torch_installed():
        return False
    if args.command in ("train", "serve"):
        return True
    if args.command == "sample":
        return resolve_backend(args.backend, args.device) == "torch"
    if args.command == "eval":
        return eval_backend(args) == "torch"
    return False


def _leave_process_group_quietly() -> None:
    """Under torchrun, exit now: tearing down a process group whose peers are also failing can
    abort in C++ destructors after the one-line message, which is all the user should see."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_USAGE)
