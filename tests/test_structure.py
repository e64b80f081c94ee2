"""The shape of the package: imports flow one way, and every option has exactly one flag."""

from __future__ import annotations

import argparse
import ast
from dataclasses import fields
from pathlib import Path

import pytest

from chargen.cli import build_parser
from chargen.config import ModelConfig, PrepareOptions, SampleOptions, TrainConfig
from chargen.options import specs

PACKAGE = Path(__file__).resolve().parent.parent / "chargen"


def import_graph() -> dict[str, set[str]]:
    """module -> the chargen modules it imports anywhere (top level or inside functions), plus the
    package's lazy public names (``_LAZY`` in ``__init__``)."""
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    graph = {}
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    edges.add(node.module.split(".")[0])
                else:  # from . import x: x is a module, or a name of the package itself
                    edges |= {a.name if a.name in modules else "__init__" for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("chargen"):
                parts = node.module.split(".")
                edges.add(parts[1] if len(parts) > 1 else "__init__")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and node.value.startswith("chargen.") and node.value.split(".")[1] in modules:
                edges.add(node.value.split(".")[1])  # importlib.import_module("chargen.x") in _LAZY
        graph[path.stem] = edges - {path.stem}
    return graph


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph()
    visiting, done = [], set()

    def visit(m):
        if m in visiting:
            cycle = visiting[visiting.index(m):] + [m]
            pytest.fail("import circle: " + " -> ".join(cycle))
        if m in done:
            return
        visiting.append(m)
        for n in sorted(graph.get(m, ())):
            visit(n)
        visiting.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)


def test_the_library_never_imports_the_cli():
    graph = import_graph()
    assert [m for m, edges in graph.items() if "cli" in edges] == ["__main__"]


def test_leaf_modules_import_nothing_but_errors():
    graph = import_graph()
    for leaf in ("errors", "version", "files", "options"):
        assert graph[leaf] <= {"errors"}, (leaf, graph[leaf])
    assert "corpus" not in graph["hf"]


def _flags(parser: argparse.ArgumentParser, command: str) -> dict[str, str]:
    """dest -> option string of every flag of a subcommand."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {a.dest: a.option_strings[0] for a in sub._actions if a.option_strings and a.dest != "help"}


# Flags that are not config fields: where things are and what to do with a run.
COMMAND_FLAGS = {
    "prepare": {"corpora_dir", "cache_dir", "json"},
    "train": {"corpora_dir", "cache_dir", "out", "config", "preset", "resume", "overwrite", "progress",
              "init_from", "init_checkpoint", "keep_vocab"},
    "sample": {"device", "checkpoint", "backend", "prompt", "prompt_file"},
}
CONFIGS = {"prepare": (PrepareOptions,), "train": (PrepareOptions, ModelConfig, TrainConfig),
           "sample": (SampleOptions,)}


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_every_config_field_has_exactly_one_flag_and_the_reverse(command):
    flags = _flags(build_parser(), command)
    option_fields = {name for cls in CONFIGS[command] for name in specs(cls)}
    assert set(flags) - COMMAND_FLAGS[command] == option_fields
    assert len(set(flags.values())) == len(flags)  # no flag spelled twice
    for cls in CONFIGS[command]:
        for f in fields(cls):
            # the vocabulary's size comes from the corpus; a base vocabulary from --init-from and --keep-vocab
            assert f.name in specs(cls) or f.name in ("vocab_size", "vocab_base", "vocab_grow"), \
                f"{cls.__name__}.{f.name} has no flag"


def test_help_shows_the_dataclass_defaults():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    helps = {a.dest: a.help for a in sub._actions}
    assert helps["hidden_size"].endswith(f"(default {ModelConfig.__dataclass_fields__['hidden_size'].default})")
    assert helps["eval_every"].endswith(f"(default {TrainConfig().eval_every})")
    assert SampleOptions().temperature == 0.8
