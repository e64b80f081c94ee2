"""The shape of the package: wings in one order, imports only downward, no circles, short pieces, and
every option with exactly one flag."""

from __future__ import annotations

import argparse
import ast
from dataclasses import fields
from pathlib import Path

import pytest

from chargen.cli import build_parser
from chargen.config import ModelConfig, PrepareOptions, SampleOptions, TrainConfig
from chargen.config.options import specs
from conftest import REPO

PACKAGE = REPO / "chargen"
# The wings from the bottom up. A module may import the leaves, its own wing and the wings on lower floors,
# never one on its own floor (data and model, training and serve, know nothing of each other) or above.
# A new wing gets its floor here.
FLOORS = (("leaves",), ("config",), ("data", "model"), ("runs",), ("generate",), ("training", "serve"), ("cli",))
LEAVES = ("errors", "version", "files", "signals")
FACADE = ("__init__", "__main__")  # the package's public names (lazily, from every wing) and python -m chargen
FLOOR = {wing: n for n, floor in enumerate(FLOORS) for wing in floor}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 50
# Functions allowed past MAX_FUNCTION_LINES, each with the reason: only data tables.
LONG_FUNCTIONS: dict[str, str] = {}


def modules() -> dict[str, Path]:
    """dotted name under chargen (``data.prepared``, ``config`` for a wing's __init__) -> file."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def wing(module: str) -> str:
    top = module.split(".")[0]
    return "leaves" if top in LEAVES else top


def _resolve(importer: str, level: int, module: str | None) -> str:
    """The dotted name (under chargen) that ``from <level dots><module> import ...`` in importer refers to."""
    package = importer.split(".") if _is_package(importer) else importer.split(".")[:-1]
    base = package[: len(package) - (level - 1)] if level > 1 else package
    return ".".join([*base, *(module.split(".") if module else [])])


def _is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py" if name in modules() else False


def _known(name: str, names) -> str:
    """The longest prefix of name that is a module of the package."""
    parts = name.split(".")
    while parts and ".".join(parts) not in names:
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the chargen modules it imports anywhere (top level or inside functions), plus the
    package's lazy public names (``_LAZY`` in ``__init__``: strings ``"chargen.x.y"``)."""
    names = modules()
    graph = {}
    for name, path in names.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = _resolve(name if name != "__init__" else "", node.level, node.module).strip(".")
                elif (node.module or "").split(".")[0] == "chargen":
                    base = node.module.partition(".")[2]
                else:
                    continue
                for alias in node.names:  # from x import y: y may be a module of its own
                    sub = f"{base}.{alias.name}" if base else alias.name
                    targets.add(sub if sub in names else base or "__init__")
            elif isinstance(node, ast.Import):
                targets |= {
                    a.name.partition(".")[2] or "__init__" for a in node.names if a.name.split(".")[0] == "chargen"
                }
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("chargen."):
                targets.add(node.value.partition(".")[2])
        graph[name] = {_known(t, names) or "__init__" for t in targets if _known(t, names) or t == "__init__"} - {name}
    return graph


def test_every_wing_has_a_floor():
    wings = {wing(m) for m in modules() if m not in FACADE}
    assert wings - set(FLOOR) == set(), "a wing with no floor in FLOORS: give it one"
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()} <= set(FLOOR)
    assert sorted(p.stem for p in PACKAGE.glob("*.py")) == sorted(LEAVES + FACADE), "a module outside any wing"


def wrong_imports(graph: dict[str, set[str]]) -> list[str]:
    """Each import that goes sideways or up, in words."""
    wrong = []
    for module, targets in sorted(graph.items()):
        if module in FACADE:
            continue
        for target in sorted(targets):
            if target == "__init__":
                wrong.append(f"{module} imports the package's facade (chargen/__init__.py)")
            elif wing(target) != wing(module) and FLOOR[wing(target)] >= FLOOR[wing(module)]:
                wrong.append(f"{module} ({wing(module)}) imports {target} ({wing(target)})")
    return wrong


def find_circle(graph: dict[str, set[str]]) -> list[str]:
    """One circle of imports (its modules, the first repeated at the end), or [] when there is none."""
    visiting, done = [], set()

    def visit(m) -> list[str]:
        if m in visiting:
            return visiting[visiting.index(m) :] + [m]
        if m in done:
            return []
        visiting.append(m)
        for n in sorted(graph.get(m, ())):
            if circle := visit(n):
                return circle
        visiting.pop()
        done.add(m)
        return []

    for m in sorted(graph):
        if circle := visit(m):
            return circle
    return []


def test_imports_go_only_down():
    assert wrong_imports(import_graph()) == []


def test_no_module_imports_one_that_imports_it_back():
    assert find_circle(import_graph()) == []


def test_the_facade_never_imports_the_cli():
    graph = import_graph()
    assert {t for t in graph["__init__"] if wing(t) == "cli"} == set()
    assert graph["__main__"] == {"cli"}


def test_the_checks_catch_a_wrong_import_and_a_circle():
    """The rules on made-up graphs (they would fail), and the parser on known edges of the real one."""
    assert wrong_imports({"generate.sampler": {"training.trainer"}}) == [
        "generate.sampler (generate) imports training.trainer (training)"
    ]
    assert wrong_imports({"serve.app": {"training.launch"}, "data.vocab": {"model.network"}}) == [
        "data.vocab (data) imports model.network (model)",
        "serve.app (serve) imports training.launch (training)",
    ]
    assert wrong_imports({"cli.entry": {"serve.app", "errors"}, "runs.folder": {"runs.checkpoint", "config"}}) == []
    assert wrong_imports({"runs.info": {"__init__"}}) != []
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
    assert _resolve("generate.sampler", 2, "runs.folder") == "runs.folder"
    assert _resolve("config", 1, "options") == "config.options"
    assert _resolve("cli.entry", 1, None) == "cli"
    graph = import_graph()
    assert "runs.folder" in graph["generate.sampler"] and "config" in graph["data.vocab"]
    assert "errors" in graph["config.options"] and "generate.sampler" in graph["__init__"]


def test_leaves_import_only_leaves():
    graph = import_graph()
    for leaf in LEAVES:
        assert {wing(t) for t in graph[leaf]} <= {"leaves"}, (leaf, graph[leaf])
    assert graph["config.options"] <= {"errors"}
    assert "data.sources" not in graph["data.hf"]


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's body past its docstring: the signature (one parameter a line, as the
    formatter writes long ones) and the documentation are not what makes a function long."""
    body = node.body
    if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return node.end_lineno - body[0].lineno + 1


def _function_sizes() -> dict[str, int]:
    sizes = {}
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                sizes[f"{name}:{node.lineno} {node.name}"] = _body_lines(node)
    return sizes


def test_function_size_counts_the_body_past_the_docstring():
    tree = ast.parse('def f(\n    a,\n    b,\n):\n    """Doc.\n\n    More.\n    """\n    x = a\n    return x\n')
    assert _body_lines(tree.body[0]) == 2
    assert _body_lines(ast.parse("def g():\n    'only a docstring'\n").body[0]) == 1


def test_no_module_passes_400_lines():
    long = {
        name: n
        for name, path in modules().items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_function_passes_50_lines():
    long = {
        where: n
        for where, n in _function_sizes().items()
        if n > MAX_FUNCTION_LINES and where.split(" ", 1)[1] not in LONG_FUNCTIONS
    }
    assert long == {}
    assert max(_function_sizes().values()) > 10  # the walk finds functions at all


def _flags(parser: argparse.ArgumentParser, command: str) -> dict[str, str]:
    """dest -> option string of every flag of a subcommand."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {a.dest: a.option_strings[0] for a in sub._actions if a.option_strings and a.dest != "help"}


# Flags that are not config fields: where things are and what to do with a run.
COMMAND_FLAGS = {
    "prepare": {"corpora_dir", "cache_dir", "json"},
    "train": {
        "corpora_dir",
        "cache_dir",
        "out",
        "config",
        "preset",
        "resume",
        "overwrite",
        "progress",
        "init_from",
        "init_checkpoint",
        "keep_vocab",
    },
    "sample": {"device", "checkpoint", "backend", "prompt", "prompt_file", "novelty", "max_copy", "max_tries"},
}
CONFIGS = {
    "prepare": (PrepareOptions,),
    "train": (PrepareOptions, ModelConfig, TrainConfig),
    "sample": (SampleOptions,),
}


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_every_config_field_has_exactly_one_flag_and_the_reverse(command):
    flags = _flags(build_parser(), command)
    option_fields = {name for cls in CONFIGS[command] for name in specs(cls)}
    assert set(flags) - COMMAND_FLAGS[command] == option_fields
    assert len(set(flags.values())) == len(flags)  # no flag spelled twice
    for cls in CONFIGS[command]:
        for f in fields(cls):
            # the vocabulary's size comes from the corpus; a base vocabulary from --init-from and --keep-vocab
            assert f.name in specs(cls) or f.name in ("vocab_size", "vocab_base", "vocab_grow"), (
                f"{cls.__name__}.{f.name} has no flag"
            )


def test_help_shows_the_dataclass_defaults():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    helps = {a.dest: a.help for a in sub._actions}
    assert helps["hidden_size"].endswith(f"(default {ModelConfig.__dataclass_fields__['hidden_size'].default})")
    assert helps["eval_every"].endswith(f"(default {TrainConfig().eval_every})")
    assert SampleOptions().temperature == 0.8


def _unannotated_public_functions() -> list[str]:
    """Public functions and methods of public classes whose signature leaves a parameter or the return
    without a type: mypy checks only what is annotated, so these would escape it."""
    found = []

    def walk(body, module: str, owner: str | None = None) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                walk(node.body, module, node.name)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.name.startswith("_") and node.name != "__init__":
                    continue
                a = node.args
                params = [*a.posonlyargs, *a.args, *a.kwonlyargs, *filter(None, [a.vararg, a.kwarg])]
                if owner is not None and params and params[0].arg in ("self", "cls"):
                    params = params[1:]
                untyped = [p.arg for p in params if p.annotation is None]
                if node.returns is None and node.name != "__init__":
                    untyped.append("return")
                if untyped:
                    where = f"{owner}.{node.name}" if owner else node.name
                    found.append(f"{module}.{where}: {', '.join(untyped)}")

    for name, path in modules().items():
        walk(ast.parse(path.read_text(encoding="utf-8")).body, name)
    return found


def test_every_public_signature_is_typed():
    assert _unannotated_public_functions() == []
