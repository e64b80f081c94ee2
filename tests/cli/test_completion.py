"""chargen completion: the bash script, sourced in a real bash, completes what the parser accepts."""

from __future__ import annotations

import argparse
import shutil
import subprocess

import pytest

from chargen.cli import build_parser
from chargen.cli.completion import script
from chargen.config.presets import PRESETS

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def complete(words: list[str], shell: str = "bash", options: str = "", cwd=None) -> list[str]:
    """What the completion function offers for the command line ``words`` (the last one being typed), in a
    bash with ``shopt`` ``options`` set."""
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    program = f"""
{f"shopt -s {options}" if options else ""}
{script(build_parser(), "bash")}
COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}
_chargen
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30, cwd=cwd)
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
    assert complete(["chargen", "train", "--cell", ""]) == ["lstm", "gru", "rnn", "mingru", "minlstm"]
    assert complete(["chargen", "sample", "run", "--backend", "n"]) == ["numpy"]
    (tmp_path / "notes.txt").write_text("x")
    assert complete(["chargen", "train", str(tmp_path / "no")]) == [str(tmp_path / "notes.txt")]


def test_positional_choices_and_presets_complete_not_files(tmp_path):
    """Found by the hostile pass: `chargen completion <TAB>` and `--preset <TAB>` offered file names."""
    (tmp_path / "zzz.txt").write_text("x")
    assert complete(["chargen", "completion", ""], cwd=tmp_path) == ["bash", "zsh"]
    assert complete(["chargen", "completion", "z"], cwd=tmp_path) == ["zsh"]
    assert complete(["chargen", "train", "--preset", ""], cwd=tmp_path) == list(PRESETS)


def test_a_value_after_an_equals_sign_completes(tmp_path):
    """bash splits `--device=c` into `--device`, `=`, `c` (COMP_WORDBREAKS holds `=`)."""
    assert complete(["chargen", "train", "--device", "=", ""]) == ["auto", "cpu", "cuda", "mps"]
    assert complete(["chargen", "train", "--device", "=", "c"]) == ["cpu", "cuda"]
    assert complete(["chargen", "train", "--cell", "=", "g"]) == ["gru"]


@pytest.mark.parametrize("options", ["", "failglob", "nullglob"])
def test_file_names_with_spaces_and_glob_characters_come_back_whole(tmp_path, options):
    """Found by the hostile pass: `compgen -f` output was split on spaces, and globbed (failglob stopped it)."""
    for name in ("a b.txt", "brk[1].txt", "a*star.txt"):
        (tmp_path / name).write_text("x")
    (tmp_path / "dir one").mkdir()
    got = complete(["chargen", "train", ""], options=options, cwd=tmp_path)
    assert sorted(got) == ["a b.txt", "a*star.txt", "brk[1].txt", "dir one"]
    assert sorted(complete(["chargen", "train", "a"], options=options, cwd=tmp_path)) == ["a b.txt", "a*star.txt"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="needs zsh")
def test_zsh_sources_the_script_without_compinit_set_up(tmp_path):
    """Found by the hostile pass: in a ~/.zshrc without compinit, `source <(chargen completion zsh)` failed
    with `command not found: compdef`."""
    (tmp_path / "s.zsh").write_text(script(build_parser(), "zsh"))
    done = subprocess.run(
        ["zsh", "-f", "-c", f"source {tmp_path / 's.zsh'} && print -r -- ${{_comps[chargen]}}"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.strip() != ""


def test_the_command_prints_each_shell_and_refuses_others(cli):
    code, out, _ = cli("completion", "bash")
    assert code == 0 and out == script(build_parser(), "bash") and "complete -o filenames -F _chargen chargen" in out
    code, out, _ = cli("completion", "zsh")
    assert code == 0 and "autoload -U +X bashcompinit && bashcompinit\n" in out and "compinit" in out.splitlines()[0]
    code, _, err = cli("completion", "fish")
    assert code == 2 and "invalid choice: 'fish'" in err and len(err.strip().splitlines()) == 1
