"""Regressions for what a hostile try at the restructured package broke: a failed run must remove only
what it made, and every odd input is one line, exit 2 (or a ChargenError from Python)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import chargen
from chargen import ChargenError, SampleOptions, Sampler
from chargen.runs.folder import LOCK_FILE, RunLock
from chargen.training import claim as runs_mod
from conftest import GOLDEN_DIR as GOLDEN
from conftest import one_error_line

SMALL = [
    "--layers",
    "1",
    "--hidden",
    "16",
    "--batch-size",
    "4",
    "--bptt",
    "8",
    "--preview-chars",
    "0",
    "--warmup-steps",
    "0",
    "--max-steps",
    "3",
]


@pytest.fixture
def corpus(tmp_path) -> Path:
    p = tmp_path / "c.txt"
    p.write_text("the quick brown fox jumps over the lazy dog\n" * 100)
    return p


@pytest.fixture
def golden(tmp_path) -> Path:
    shutil.copytree(GOLDEN / "run", tmp_path / "run")
    shutil.copy(GOLDEN / "corpus.txt", tmp_path / "corpus.txt")
    return tmp_path / "run"


def test_a_failed_claim_never_removes_a_parent_another_run_uses(tmp_path):
    claim = runs_mod.RunClaim(tmp_path / "runs" / "x", overwrite=False)  # makes runs/ and runs/x
    (tmp_path / "runs" / "y").mkdir()  # another run appears beside it
    (tmp_path / "runs" / "y" / "config.json").write_text("{}")
    claim.abandon()
    assert not (tmp_path / "runs" / "x").exists()
    assert (tmp_path / "runs" / "y" / "config.json").is_file()


def test_a_claim_refused_the_lock_leaves_the_holders_folder_alone(tmp_path, monkeypatch):
    out = tmp_path / "race"
    holders = []
    real = runs_mod.RunLock

    def late(path):  # another process locks the folder between our mkdir and our flock
        holders.append(real(path))
        return real(path)

    monkeypatch.setattr(runs_mod, "RunLock", late)
    with pytest.raises(ChargenError, match="is in use"):
        runs_mod.RunClaim(out, overwrite=False)
    assert (out / LOCK_FILE).is_file()  # the holder's folder and lock file are still there
    holders[0].release()


def test_an_interrupt_before_the_first_checkpoint_leaves_nothing(corpus, tmp_path, monkeypatch):
    from chargen.training.trainer import Trainer

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "__init__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        chargen.train(
            corpus, out=tmp_path / "a" / "run", max_steps=3, num_layers=1, hidden_size=8, batch_size=4, bptt=8
        )
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--hidden", "99999999999999999999"], ["parameters, about", "GiB to train", "use a smaller --hidden"]),
        (["--layers", "100000000000"], ["parameters, about", "use a smaller"]),
        (["--epochs", "1e308"], ["argument --epochs: must be in (0, 1000000000], got 1e+308"]),
        (["--encoding", "rot13"], ["'rot13' is not a text encoding"]),
    ],
)
def test_odd_train_values_are_one_line_and_leave_no_folder(cli, corpus, tmp_path, args, fragments):
    run = tmp_path / "deep" / "run"
    code, _, err = cli("train", corpus, "--out", run, *SMALL, *args)
    assert code == 2
    one_error_line(err, *fragments)
    assert not (tmp_path / "deep").exists()


def test_odd_out_paths(cli, corpus, tmp_path):
    (tmp_path / "afile").write_text("x")
    code, _, err = cli("train", corpus, "--out", tmp_path / "afile", *SMALL)
    assert code == 2
    one_error_line(err, "afile is a file, not a run folder")
    code, _, err = cli("train", corpus, "--out", tmp_path / "afile" / "sub", *SMALL)
    assert code == 2
    one_error_line(err, "cannot create", "afile/sub")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    code, _, err = cli("train", corpus, "--out", tmp_path / "dangling", *SMALL)
    assert code == 2
    one_error_line(err, "dangling is a symbolic link to a missing folder")
    code, _, err = cli("train", corpus, "--out", "", *SMALL)
    assert code == 2
    one_error_line(err, "--out must name a run folder")
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize(
    "edit,fragment",
    [
        (lambda c: c["train"].update(batch_size="64"), "bad train section (--batch-size must be a whole number"),
        (lambda c: c["train"].pop("batch_size"), "bad train section (missing batch_size)"),
        (lambda c: c["model"].pop("hidden_size"), "bad model section (missing hidden_size)"),
        (lambda c: c["model"].update(hidden_size=40000, embedding_size=40000), "does not fit the model in config.json"),
        (lambda c: c.update(schedule="x"), "bad schedule section"),
        (lambda c: c["corpus"].update(chars="many"), "bad corpus section"),
        (lambda c: c["corpus"].update(prepare={"bogus": 1}), "bad corpus section"),
        (lambda c: c.update(format_version=True), "format version True"),
    ],
)
@pytest.mark.parametrize("command", ["sample", "info", "resume"])
def test_damaged_config_sections_are_one_line_everywhere(cli, golden, edit, fragment, command):
    config = json.loads((golden / "config.json").read_text())
    edit(config)
    (golden / "config.json").write_text(json.dumps(config))
    args = {
        "sample": ["sample", golden, "--length", "5"],
        "info": ["info", golden],
        "resume": ["train", golden.parent / "corpus.txt", "--out", golden, "--resume", "--max-steps", "8"],
    }
    code, out, err = cli(*args[command])
    assert code == 2 and out == ""
    one_error_line(err, fragment)


def test_a_tiny_temperature_is_greedy(golden):
    s = Sampler.load(golden)
    assert s.generate("the ", length=40, temperature=1e-320, seed=1) == s.generate("the ", length=40, temperature=0)


def test_python_api_mistakes_are_chargen_errors(golden, corpus, tmp_path):
    s = Sampler.load(golden)
    for call in (
        lambda: s.generate("the", bogus=1),
        lambda: s.generate("the", SampleOptions(), bogus=1),
        lambda: s.stream("the", bogus=1),
        lambda: s.generate("the", {"length": 5}),
        lambda: s.generate(b"the", length=5),
        lambda: s.generate(None),
        lambda: Sampler.load(None),
        lambda: s.score("the", unknown="x"),
        lambda: s.generate("the", n=10**12),
        lambda: chargen.train(corpus, out=None),
        lambda: chargen.train(corpus, out=tmp_path / "r", preset=["cpu"]),
        lambda: chargen.train("", out=tmp_path / "r"),
    ):
        with pytest.raises(ChargenError):
            call()
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "content,fragment",
    [
        (b"\xff = 1\n", "is not valid TOML"),
        (b'preset = ["cpu"]\n', "unknown preset ['cpu']"),
        (b'source = ""\n', "must be a path, glob or corpus name"),
        (b"source = 3\n", "must be a path, glob or corpus name, got 3"),
    ],
)
def test_odd_toml_files(cli, tmp_path, content, fragment):
    (tmp_path / "c.toml").write_bytes(content)
    code, _, err = cli("train", "--config", tmp_path / "c.toml", "--out", tmp_path / "run")
    assert code == 2
    one_error_line(err, fragment)
    assert not (tmp_path / "run").exists()


def test_a_huge_n_is_one_line(cli, golden):
    code, out, err = cli("sample", golden, "-n", "99999999999999", "--length", "5")
    assert code == 2 and out == ""
    one_error_line(err, "argument -n: must be in [1, 65536]")


def test_a_run_lock_cannot_be_taken_in_a_folder_that_is_gone(tmp_path):
    with pytest.raises(ChargenError, match="cannot lock"):
        RunLock(tmp_path / "missing")


def test_overwrite_never_deletes_a_folder_that_only_looks_like_a_run(cli, corpus, tmp_path):
    """Issue 8, item 2: a project folder with a config.json of its own is not a run."""
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "config.json").write_text('{"name": "my app"}')
    (proj / "src" / "main.py").write_text("precious\n")
    code, _, err = cli("train", corpus, "--out", proj, "--overwrite", *SMALL)
    assert code == 2
    one_error_line(err, "is not a chargen run folder; --overwrite only replaces runs")
    assert (proj / "src" / "main.py").read_text() == "precious\n"
    assert sorted(p.name for p in proj.iterdir()) == ["config.json", "src"]


def test_a_bom_at_the_start_of_a_prompt_file_is_not_text(cli, golden, tmp_path):
    """Issue 8, item 10."""
    (tmp_path / "p.txt").write_bytes("\ufeffthe ".encode("utf-8"))
    code, out, err = cli("sample", golden, "--prompt-file", tmp_path / "p.txt", "--length", "10", "--seed", "1")
    assert code == 0, err
    _code2, out2, _ = cli("sample", golden, "--prompt", "the ", "--length", "10", "--seed", "1")
    assert out == out2 and out.startswith("the ")


def test_a_prompt_of_bytes_that_were_not_utf8_is_one_line(cli, tmp_path):
    """Issue 8, item 8: on a run built with --normalize nfc, such a prompt gave UnicodeEncodeError."""
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 100)
    run = tmp_path / "run"
    code, _, err = cli("train", text, "--out", run, "--normalize", "nfc", *SMALL)
    assert code == 0, err
    code, out, err = cli("sample", run, "--prompt", "the \udcff", "--length", "5")  # how argv carries byte 0xff
    assert code == 2 and out == ""
    one_error_line(err, "--prompt is not valid UTF-8")
    with pytest.raises(ChargenError, match="the text is not valid Unicode"):  # the same from Python
        Sampler.load(run).generate("the \udcff", length=5)


def test_a_prompt_of_bytes_that_were_not_utf8_without_a_normalizer(cli, golden):
    code, out, err = cli("sample", golden, "--prompt", "caf\udce9", "--length", "5", "--unknown", "unk")
    assert code == 2 and out == ""
    one_error_line(err, "--prompt is not valid UTF-8")


def test_a_users_own_dot_lock_file_is_never_touched(cli, corpus, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / ".lock").write_text("precious\n")
    (folder / "notes.txt").write_text("data\n")
    code, _, err = cli("train", corpus, "--out", folder, "--overwrite", *SMALL)
    assert code == 2
    one_error_line(err, "not a chargen run folder")
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "notes.txt"]
    assert (folder / ".lock").read_text() == "precious\n"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("args", [["completion", "bash"], ["info", "RUN"], ["sample", "RUN", "--length", "50"]])
def test_output_to_a_full_disk_is_one_line_not_a_traceback(golden, args):
    """Found by the hostile pass: `chargen completion bash > /dev/full` ended in an OSError traceback."""
    args = [str(golden) if a == "RUN" else a for a in args]
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "chargen", *args], stdout=full, stderr=subprocess.PIPE, text=True, timeout=120
        )
    assert done.returncode == 2, done.stderr
    one_error_line(done.stderr, f"chargen {args[0]}: error: cannot write the output: No space left on device")


@pytest.mark.parametrize("flag", ["--bogus", "-V", "--versio"])
def test_an_unknown_flag_before_the_command_is_named(cli, flag):
    """Found by the hostile pass: `chargen --bogus` said 'the following arguments are required: COMMAND'."""
    code, _, err = cli(flag)
    assert code == 2
    one_error_line(err, f"chargen: error: unrecognized arguments: {flag} (see chargen --help)")
