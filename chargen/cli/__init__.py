"""The ``chargen`` command: ``parser`` builds it, one module per subcommand holds that subcommand's flags and
the function calling the library (``prepare``, ``train``, ``sample``, ``eval``, ``serve``, ``export``, ``plot``,
``info``; flags they share in ``args``), and ``entry.main`` runs it."""

from .entry import main
from .parser import build_parser

__all__ = ["build_parser", "main"]
