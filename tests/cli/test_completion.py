"""chargen completion: the bash script, sourced in a real bash, completes what the parser accepts."""

from __future__ import annotations

import argparse
import shutil
import subprocess

import pytest

from chargen.cli import build_parser
from chargen.cli.completion import script

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def complete(words: list[str], shell: str = "bash") -> list[str]:
    """What the completion function offers for the command line ``words`` (the last one being typed)."""
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    program = f"""
{script(build_parser(), "bash")}
COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}
_chargen
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return [w for w in done.stdout.splitlines() if w]


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_subcommands_complete():
    assert complete(["chargen", "tr"]) == ["train"]
    assert set(complete(["chargen", ""])) >= set(_subcommands()) | {"--version"}


@pytest.mark.parametrize("name", list(_subcommands()))
def test_every_flag_of_every_subcommand_completes(name):
    sub = _subcommands()[name]
    flags = {s for a in sub._actions for s in a.option_strings}
    assert set(complete(["chargen", name, "-"])) == flags


def test_choices_complete_after_their_flag_and_files_elsewhere(tmp_path):
    assert complete(["chargen", "train", "--cell", ""]) == ["lstm", "gru"]
    assert complete(["chargen", "sample", "run", "--backend", "n"]) == ["numpy"]
    assert complete(["chargen", "completion", "z"]) == []  # a positional: files, and there are none here
    (tmp_path / "notes.txt").write_text("x")
    assert complete(["chargen", "train", str(tmp_path / "no")]) == [str(tmp_path / "notes.txt")]


def test_the_command_prints_each_shell_and_refuses_others(cli):
    code, out, _ = cli("completion", "bash")
    assert code == 0 and out == script(build_parser(), "bash") and "complete -o filenames -F _chargen chargen" in out
    code, out, _ = cli("completion", "zsh")
    assert code == 0 and out.startswith("autoload -U +X bashcompinit && bashcompinit\n")
    code, _, err = cli("completion", "fish")
    assert code == 2 and "invalid choice: 'fish'" in err and len(err.strip().splitlines()) == 1
