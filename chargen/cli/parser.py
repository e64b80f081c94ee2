"""The ``chargen`` parser: one subparser per subcommand, each filled in by the subcommand's own module."""

from __future__ import annotations

import argparse
from typing import NoReturn

from . import completion, export, info, inspect, plot, prepare, sample, serve, train
from . import eval as evaluate  # not to shadow the builtin here

EXIT_USAGE = 2

# The subcommands in the order ``chargen --help`` lists them.
COMMANDS = {
    "prepare": prepare,
    "train": train,
    "sample": sample,
    "eval": evaluate,
    "inspect": inspect,
    "serve": serve,
    "export": export,
    "plot": plot,
    "info": info,
    "completion": completion,
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and still exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``chargen`` command; light: it imports no torch, numpy or datasets."""
    from ..version import __version__

    parser = _Parser(prog="chargen", description="Character-level text generation with LSTM/GRU models.")
    parser.add_argument("--version", action="version", version=f"chargen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.HELP, description=command.DESCRIPTION or command.HELP)
        command.add_args(p)
        p.set_defaults(func=command.run)
    completion_parser = sub.choices["completion"]
    completion_parser.set_defaults(root_parser=parser)  # the script is written from the whole parser
    return parser
