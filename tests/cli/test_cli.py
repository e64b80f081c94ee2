"""The command line: JSON summary, readable summary, and every bad input's one line + exit 2."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, one_error_line

JSON_KEYS = {
    "source",
    "fingerprint",
    "cache_dir",
    "reused",
    "chars",
    "vocab_size",
    "train_chars",
    "val_chars",
    "test_chars",
    "unknown_chars",
}


def test_prepare_json(cli, tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("hello world\n" * 50)
    code, out, err = cli("prepare", p, "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s.keys() >= JSON_KEYS
    assert s["chars"] == 600 and s["train_chars"] == 540 and s["reused"] is False
    assert os.path.isfile(os.path.join(s["cache_dir"], "tokenizer.json"))
    code, out, _ = cli("prepare", p, "--json")
    assert json.loads(out)["reused"] is True


def test_prepare_readable_summary(cli, tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("hello world\n" * 50)
    code, out, _ = cli("prepare", p, "--val-fraction", "0.2")
    assert code == 0
    assert "prepared" in out and "vocabulary of 9" in out and "train 480 / val 120 / test 0" in out


def test_prepare_named_corpus_from_search_path(cli, corpora_dir):
    code, out, err = cli("prepare", "tinyshakespeare", "--corpora-dir", corpora_dir, "--json")
    assert code == 0, err
    s = json.loads(out)
    assert (s["vocab_size"], s["train_chars"], s["val_chars"]) == (65, 1003854, 111540)


def test_prepare_default_is_pystdlib(cli):
    code, out, err = cli("prepare", "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["source"] == "pystdlib" and s["chars"] > 1_000_000


@pytest.mark.parametrize(
    "make,args,fragments",
    [
        (None, ["/no/such/file.txt"], ["/no/such/file.txt does not exist"]),
        (None, ["nosuchcorpus"], ["unknown corpus 'nosuchcorpus'", "tinyshakespeare"]),
        ("empty", ["{d}/empty.txt"], ["is empty"]),
        ("binary", ["{d}/blob.txt"], ["looks like a binary file"]),
        ("latin1", ["{d}/latin.txt"], ["not valid utf-8: undecodable byte at offset 3", "--encoding"]),
        ("emptydir", ["{d}/emptydir"], ["has no text files"]),
        (None, ["{d}/*.nomatch"], ["no files match"]),
        (
            "upper",
            ["{d}/upper.txt", "--lowercase", "--val-fraction", "0.5", "--test-fraction", "0.5"],
            ["must be below 1"],
        ),
        (None, ["--val-fraction", "1.5"], ["argument --val-fraction: must be in [0, 1)"]),
        (None, ["--min-char-count", "0"], ["must be at least 1"]),
        (None, ["--normalize", "nfx"], ["invalid choice: 'nfx'"]),
        (None, ["--encoding", "klingon"], ["'klingon' is an unknown encoding"]),
        (None, ["tinyshakespeare", "--corpora-dir", "{d}"], ["downloads are off; put tinyshakespeare.txt in one of"]),
        ("jsonl", ["hf:{d}/d.jsonl", "--text-column", "body"], ["has no column 'body'", "--text-column"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path, monkeypatch, make, args, fragments):
    monkeypatch.delenv("CHARGEN_CORPORA", raising=False)  # so that no named corpus is found
    d = tmp_path
    if make == "empty":
        (d / "empty.txt").write_text("")
    elif make == "binary":
        (d / "blob.txt").write_bytes(b"\x7fELF\x00\x01")
    elif make == "latin1":
        (d / "latin.txt").write_bytes("café au lait\n".encode("latin-1"))
    elif make == "emptydir":
        (d / "emptydir").mkdir()
        (d / "emptydir" / "x.bin").write_bytes(b"\x00\x01")
    elif make == "upper":
        (d / "upper.txt").write_text("ABC\n" * 10)
    elif make == "jsonl":
        pytest.importorskip("datasets", reason="hf: sources need datasets (chargen[train])")
        (d / "d.jsonl").write_text('{"text": "a"}\n')
    code, out, err = cli("prepare", *[a.format(d=d) for a in args])
    assert code == 2
    assert out == ""
    one_error_line(err, *fragments)


def test_python_m_chargen_runs_without_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run(
        [sys.executable, "-m", "chargen", "prepare", str(tmp_path / "missing.txt")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 2 and r.stdout == ""
    one_error_line(r.stderr, "missing.txt does not exist")
    r = subprocess.run([sys.executable, "-m", "chargen", "--version"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and r.stdout.startswith("chargen ")


def test_cli_import_does_not_pull_heavy_modules():
    code = (
        "import sys, chargen.cli; chargen.cli.build_parser(); "
        "print(sorted(m for m in ('torch', 'datasets', 'tokenizers', 'numpy') if m in sys.modules))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO))
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_prepare_does_not_import_torch_or_datasets(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("abc\n" * 100)
    code = (
        "import sys; from chargen.cli import main; rc = main(['prepare', sys.argv[1], '--json']); "
        "print(rc, 'torch' in sys.modules, 'datasets' in sys.modules, file=sys.stderr)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(p)], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO))
    )
    assert r.stderr.strip().splitlines()[-1] == "0 False False"


def test_a_ctrl_c_while_the_process_exits_is_no_traceback(tmp_path):
    """A Ctrl-C that lands after the command is done, while the interpreter runs its exit handlers, must not
    print a traceback (seen once when a random SIGINT of the interrupt tests came that late)."""
    code = (
        "import atexit, os, signal, sys, time\n"
        "from chargen.cli import main\n"
        "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(0.2)))\n"
        "sys.argv = ['chargen', 'completion', 'bash']\n"
        "raise SystemExit(main())\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO))
    )
    assert r.returncode == 0 and "-F _chargen chargen" in r.stdout
    assert "Traceback" not in r.stderr and "KeyboardInterrupt" not in r.stderr, r.stderr
