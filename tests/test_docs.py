"""The docs cannot go stale: every example on the site and in the README is run, or says why it is not.

Each fenced block of Python or shell carries a marker on the line above it:

* ``<!-- docs: run -->``: run here, in a scratch folder that holds a small
  trained run at ``runs/shakespeare`` and a few text files; the blocks of a
  page run in order, in one folder, so a later block can use an earlier one's
  output;
* ``<!-- docs: not run (why) -->``: not run, with the reason (it trains for
  minutes, needs a GPU, a server, ...);
* ``<!-- quickstart:NAME -->``: the README's quickstart, which ``.ci/run`` runs.

Every ``chargen`` command in every shell block, run or not, is parsed by
the real parser, so a flag that was renamed or dropped fails here. The
reference pages and the docstrings must name only modules and objects that
exist, and every public name must be on the API page.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO, shared_corpora

DOCS = REPO / "docs"
PAGES = sorted([REPO / "README.md", *DOCS.rglob("*.md")])
FENCE = re.compile(r"^```(\S*)\s*$")
MARKER = re.compile(r"^<!-- (docs: run(?: \(.+\))?|docs: not run \(.+\)|quickstart:\w+) -->$")
RUNNABLE = {"python", "bash", "console"}


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    marker: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.marker is not None and self.marker.startswith("docs: run")


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page, each with the marker on the nearest non-blank line above it."""
    lines = page.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(above)
        out.append(Block(page, i + 1, m.group(1), "\n".join(lines[i + 1 : end]) + "\n", marker and marker.group(1)))
        i = end + 1
    return out


ALL = [b for page in PAGES for b in blocks(page)]


def test_the_collector_finds_the_examples():
    runnable = [b for b in ALL if b.lang in RUNNABLE]
    assert len(runnable) >= 25 and sum(b.runs for b in runnable) >= 10
    readme = [b for b in runnable if b.page.name == "README.md"]
    assert {b.marker for b in readme} >= {"quickstart:main", "quickstart:test"}


def test_every_fence_names_its_language():
    assert [b.where for b in ALL if not b.lang] == []


@pytest.mark.parametrize("block", [b for b in ALL if b.lang in RUNNABLE], ids=lambda b: b.where)
def test_every_example_is_run_or_says_why_not(block):
    assert block.marker is not None, f"{block.where}: mark it <!-- docs: run --> or <!-- docs: not run (why) -->"


# --------------------------------------------------------------------------- every command parses


def commands(code: str) -> list[list[str]]:
    """The argument lists of the ``chargen`` commands in a shell block (``$ `` prompts, line continuations,
    ``&&`` chains, ``python -m chargen`` and ``torchrun ... -m chargen`` included)."""
    text = code.replace("\\\n", " ")
    text = re.sub(r"<<'?(\w+)'?\n.*?\n\1\n", "\n", text, flags=re.S)  # heredocs are data
    out = []
    for line in text.splitlines():
        line = line.removeprefix("$ ").strip()
        for part in re.split(r"&&|\|\||;|\|", line):
            words = without_redirections(shlex.split(part, comments=True))
            if words[:1] == ["chargen"]:
                out.append(words[1:])
            elif "-m" in words and words[words.index("-m") + 1 : words.index("-m") + 2] == ["chargen"]:
                out.append(words[words.index("-m") + 2 :])
    return out


def without_redirections(words: list[str]) -> list[str]:
    """``> FILE``, ``2>&1``, ``>FILE`` and ``< FILE`` go, with the file named after a bare operator."""
    out: list[str] = []
    skip = False
    for w in words:
        if skip:
            skip = False
        elif re.fullmatch(r"\d*(>>|>|<)", w):
            skip = True
        elif not re.match(r"\d*[<>]", w):
            out.append(w)
    return out


def test_commands_are_found_in_chains_continuations_and_launchers():
    code = (
        "$ chargen info r --json\nA=1 && chargen sample r \\\n  --seed 2 | head\ntorchrun --nproc 2 -m chargen train x\n"
        "chargen completion bash > out.bash  # note\nchargen info r 2>&1 >>log <in\n"
    )
    assert commands(code) == [
        ["info", "r", "--json"],
        ["sample", "r", "--seed", "2"],
        ["train", "x"],
        ["completion", "bash"],
        ["info", "r"],
    ]


SHELL = [b for b in ALL if b.lang in ("bash", "console")]


@pytest.mark.parametrize("block", [b for b in SHELL if commands(b.code)], ids=lambda b: b.where)
def test_every_chargen_command_in_the_docs_parses(block, capsys):
    from chargen.cli import build_parser

    for argv in commands(block.code):
        try:
            build_parser().parse_args(argv)
        except SystemExit as e:
            pytest.fail(f"{block.where}: chargen {shlex.join(argv)}: {capsys.readouterr().err.strip() or e}")


# --------------------------------------------------------------------------- the examples run


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder as the examples expect it: a small run of tiny shakespeare at runs/shakespeare, text files."""
    corpora = shared_corpora()
    if corpora is None:
        pytest.skip("tiny shakespeare not found ($CHARGEN_CORPORA or ../shared/corpora)")
    corpus = corpora / "tinyshakespeare.txt"
    work = tmp_path_factory.mktemp("docs")
    env = docs_env(corpora, work)
    cmd = [sys.executable, "-m", "chargen", "train", "tinyshakespeare", "--out", "runs/shakespeare"]
    done = subprocess.run(
        [*cmd, "--preset", "tiny", "--max-steps", "30", "--no-progress"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    text = corpus.read_text(encoding="utf-8")
    (work / "notes.txt").write_text(text[:20000], encoding="utf-8")
    (work / "my_lyrics.txt").write_text(text[-20000:].upper(), encoding="utf-8")
    return work, env


def docs_env(corpora: Path, work: Path) -> dict:
    env = dict(os.environ, CHARGEN_CORPORA=str(corpora), CHARGEN_OFFLINE="1", CHARGEN_CACHE=str(work / ".cache"))
    env["CHARGEN_CPU_BF16"] = "0"  # the same precision on every CPU
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `chargen` of this Python
    return env


RUN_PAGES = sorted({b.page for b in ALL if b.runs and b.lang in RUNNABLE})


@pytest.mark.parametrize("page", RUN_PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_the_examples_of_a_page_run(page, workspace):
    work, env = workspace
    here = work / page.stem
    shutil.copytree(work, here, ignore=shutil.ignore_patterns(*{p.stem for p in RUN_PAGES}, ".cache"))
    for block in blocks(page):
        if not block.runs or block.lang not in RUNNABLE:
            continue
        if block.lang == "python":
            argv = [sys.executable, "-c", block.code]
        else:
            argv = ["bash", "-euo", "pipefail", "-c", block.code]
        done = subprocess.run(argv, cwd=here, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{block.where} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


# --------------------------------------------------------------------------- names the docs give exist

# Dotted names that are not Python objects: file names, and the old module paths the docs list as moved.
NOT_OBJECTS = {"chargen.js", "chargen.json", "chargen.lock", "chargen.sample", "chargen.trainer"}  # file names


def _resolves(name: str) -> bool:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError as e:  # an optional dependency missing: the module itself is there
            if e.name and e.name.split(".")[0] != "chargen" and importlib.util.find_spec(".".join(parts[:i])):
                return True
            continue
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def test_every_dotted_chargen_name_in_the_docs_and_docstrings_exists():
    sources = [*PAGES, *(REPO / "chargen").rglob("*.py")]
    names = {
        (str(p.relative_to(REPO)), m.group(0))
        for p in sources
        for m in re.finditer(r"\bchargen(?:\.[A-Za-z_]\w*)+", p.read_text(encoding="utf-8"))
    }
    assert len(names) > 20
    assert sorted((p, n) for p, n in names if n not in NOT_OBJECTS and not _resolves(n)) == []


def test_every_public_name_is_on_the_api_page():
    import chargen

    page = (DOCS / "reference" / "api.md").read_text(encoding="utf-8")
    documented = {line.split(".")[-1].strip() for line in page.splitlines() if line.startswith("::: ")}
    assert set(chargen.__all__) - {"__version__"} <= documented


# --------------------------------------------------------------------------- the generated reference


@pytest.fixture(scope="module")
def hooks():
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_command_reference_holds_every_flag_of_every_subcommand(hooks):
    import argparse

    from chargen.cli import build_parser

    page = hooks.cli_reference()
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in action.choices.items():
        section = page.split(f"## `chargen {name}`", 1)[1].split("\n## ", 1)[0]
        for a in sub._actions:
            for flag in a.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in section, (name, flag)


def test_the_options_reference_holds_every_field_with_its_default(hooks):
    from chargen.config import ModelConfig, PrepareOptions, SampleOptions, TrainConfig
    from chargen.config.options import specs

    page = hooks.options_reference()
    for cls in (PrepareOptions, ModelConfig, TrainConfig, SampleOptions):
        for name, spec in specs(cls).items():
            key = f"`{spec.flag}` (`--no-{spec.flag}`)" if spec.kind is bool and spec.default else f"`{spec.flag}`"
            row = next(line for line in page.splitlines() if line.startswith(f"| {key} | `{name}` |"))
            assert spec.default is None or f"`{spec.default!r}`" in row, row


def test_a_generated_page_that_loses_its_marker_fails_the_build(hooks):
    assert "| `--cell` |" in hooks.expand("x\n<!-- generated:cli -->\n", "reference/cli.md")
    with pytest.raises(ValueError, match="lost its generated section"):
        hooks.expand("# Commands and flags\n", "reference/cli.md")
    with pytest.raises(ValueError, match="no generator for nope"):
        hooks.expand("<!-- generated:nope -->", "guides/x.md")
    assert hooks.ROLE.sub(r"\1", "see :func:<code>~chargen.train</code>") == "see <code>chargen.train</code>"


def test_every_test_the_guarantees_page_names_exists():
    """docs/reference/guarantees.md names the test holding each promise: each file and test exists."""
    text = (REPO / "docs" / "reference" / "guarantees.md").read_text(encoding="utf-8")
    named = 0
    for row in re.findall(r"^\|.*\|\s*$", text, flags=re.M):
        current = None
        for ref in re.findall(r"`((?:[\w/]+\.py)?(?:::\w+)?)`", row):
            if not ref:
                continue
            path, _, test = ref.partition("::")
            if path:
                matches = [REPO / path] if path.startswith("tests/") else list((REPO / "tests").rglob(path))
                assert len(matches) == 1 and matches[0].is_file(), ref
                current = matches[0]
            if test:
                assert current is not None, ref
                assert re.search(rf"^def {test}\(", current.read_text(encoding="utf-8"), flags=re.M), ref
                named += 1
    assert named >= 25
