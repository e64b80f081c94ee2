"""The ``chargen`` command: the parser and one function per subcommand, each calling the library."""

from .entry import build_parser, main

__all__ = ["build_parser", "main"]
