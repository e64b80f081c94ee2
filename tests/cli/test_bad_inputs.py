"""Every bad input the two reliability issues (8 and 9) found, in one table.

Each row sets up files, runs ``chargen ARGS`` in-process, and expects an exit
status and a fragment of the one line on stderr. Every row also checks that
the command changed nothing on disk: no new file, no file removed or rewritten
(a refused command leaves no half-written files). The next bad input found is
one row to add.
"""

from __future__ import annotations

import codecs
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

import chargen.files
from conftest import GOLDEN_DIR as GOLDEN
from conftest import one_error_line

TEXT = "the quick brown fox jumps over the lazy dog\n" * 60
TRAIN = [
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
    "--max-steps",
    "3",
]


class Row(NamedTuple):
    name: str
    setup: Callable[[Path, pytest.MonkeyPatch], list]  # makes files under the folder; returns ARGS
    code: int
    fragment: str


def text_file(d: Path, name: str = "c.txt", data: str = TEXT) -> Path:
    (d / name).write_text(data, encoding="utf-8")
    return d / name


def golden_run(d: Path, edit: Callable[[dict], None] | None = None) -> Path:
    shutil.copytree(GOLDEN / "run", d / "run")
    shutil.copy(GOLDEN / "corpus.txt", d / "corpus.txt")
    if edit is not None:
        config = json.loads((d / "run" / "config.json").read_text())
        edit(config)
        (d / "run" / "config.json").write_text(json.dumps(config))
    return d / "run"


def toml_train(line: str) -> Callable[[Path, pytest.MonkeyPatch], list]:
    def setup(d: Path, _mp) -> list:
        (d / "c.toml").write_text(line + "\n")
        return ["train", text_file(d), "--config", d / "c.toml", "--out", d / "run", *TRAIN]

    return setup


def not_a_run(d: Path, _mp) -> list:
    (d / "proj" / "src").mkdir(parents=True)
    (d / "proj" / "config.json").write_text('{"name": "my app"}')
    (d / "proj" / "src" / "main.py").write_text("precious\n")
    return ["train", text_file(d), "--out", d / "proj", "--overwrite", *TRAIN]


def utf16_folder_without_marks(d: Path, _mp) -> list:
    (d / "u16").mkdir()
    for name in ("a.txt", "b.txt"):
        (d / "u16" / name).write_bytes(TEXT.encode("utf-16-le"))
    return ["prepare", d / "u16", "--encoding", "utf-16"]


def unreadable_file_in_folder(d: Path, mp: pytest.MonkeyPatch) -> list:
    (d / "docs").mkdir()
    text_file(d / "docs", "a.txt")
    locked = text_file(d / "docs", "b.txt")
    real_open = open

    def refuse(path, *args, **kwargs):  # what a file with no read permission does (root reads anything)
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    mp.setattr(chargen.files, "open", refuse, raising=False)
    return ["prepare", d / "docs"]


def unreadable_folder_in_folder(d: Path, mp: pytest.MonkeyPatch) -> list:
    (d / "docs" / "private").mkdir(parents=True)
    text_file(d / "docs", "a.txt")
    import chargen.data.sources

    real_listdir = chargen.data.sources.os.listdir

    def refuse(path):
        if Path(path).name == "private":
            raise PermissionError(13, "Permission denied", str(path))
        return real_listdir(path)

    mp.setattr(chargen.data.sources.os, "listdir", refuse)
    return ["prepare", d / "docs"]


def afile_sub(d: Path, _mp) -> list:
    (d / "afile.txt").write_text("x")
    return ["train", text_file(d), "--out", d / "afile.txt" / "sub", *TRAIN]


ROWS = [
    # issue 8, item 2: --overwrite only replaces a run
    Row("overwrite a folder that is not a run", not_a_run, 2, "is not a chargen run folder; --overwrite only"),
    # issue 8, item 4: a config that asks for more than its weights hold
    Row(
        "config bigger than its weights",
        lambda d, _: [
            "sample",
            golden_run(d, lambda c: c["model"].update(hidden_size=40000, embedding_size=40000)),
            "--length",
            "5",
        ],
        2,
        "does not fit the model in config.json",
    ),
    # issue 8, item 5: options checked before anything is written
    Row(
        "negative seed",
        lambda d, _: ["train", text_file(d), "--out", d / "run", *TRAIN, "--seed", "-5"],
        2,
        "argument --seed: must be in [0, 2**63 - 1], got -5",
    ),
    Row(
        "huge seed",
        lambda d, _: ["train", text_file(d), "--out", d / "run", *TRAIN, "--seed", "1" + "0" * 20],
        2,
        "argument --seed: must be in [0, 2**63 - 1]",
    ),
    Row("toml embedding 16.5", toml_train("embedding = 16.5"), 2, "embedding"),
    Row("toml min-lr-ratio string", toml_train('min-lr-ratio = "0.1"'), 2, "min-lr-ratio"),
    # issue 8, item 8: sample's own bad inputs
    Row(
        "prompt of bytes that were not UTF-8",
        lambda d, _: ["sample", golden_run(d), "--prompt", "ab\udcff", "--length", "5"],
        2,
        "not valid UTF-8",
    ),
    Row("device cuda:x", lambda d, _: ["sample", golden_run(d), "--device", "cuda:x"], 2, "cuda:x"),
    Row("device mps without MPS", lambda d, _: ["sample", golden_run(d), "--device", "mps"], 2, "mps"),
    # issue 9, item 2: TOML types, per key
    Row("toml dropout string", toml_train('dropout = "0.1"'), 2, "dropout"),
    Row("toml val_fraction string", toml_train('val_fraction = "0.1"'), 2, "val_fraction"),
    Row("toml encoding number", toml_train("encoding = 5"), 2, "encoding"),
    Row("toml embedding float", toml_train("embedding = 2.5"), 2, "embedding"),
    Row("toml seed string", toml_train('seed = "1"'), 2, "seed"),
    Row("toml lowercase string", toml_train('lowercase = "no"'), 2, "lowercase"),
    # issue 9, item 4: encodings other than UTF-8
    Row(
        "utf-16 without a byte-order mark",
        lambda d, _: ["prepare", text_file(d), "--encoding", "utf-16"],
        2,
        "--encoding utf-16-le or utf-16-be",
    ),
    Row(
        "utf-16 without a byte-order mark, errors replace",
        lambda d, _: ["prepare", text_file(d), "--encoding", "utf-16", "--errors", "replace"],
        2,
        "--encoding utf-16-le or",
    ),
    Row(
        "a folder of utf-16 without byte-order marks",
        utf16_folder_without_marks,
        2,
        "has no text files (2 look binary in utf-16)",
    ),
    Row(
        "a user with no home here",
        lambda d, _: ["prepare", "~nosuchuser1234/x.txt"],
        2,
        "names the home folder of a user this machine does not have",
    ),
    Row(
        "latin-1 read as utf-8",
        lambda d, _: ["prepare", (d / "l.txt", (d / "l.txt").write_bytes("caf\u00e9\n".encode("latin-1")))[0]],
        2,
        "is not valid utf-8: undecodable byte at offset 3",
    ),
    Row(
        "utf-32 read as utf-16",
        lambda d, _: [
            "prepare",
            (d / "w.txt", (d / "w.txt").write_bytes(codecs.BOM_UTF32_LE + "hi\n".encode("utf-32-le")))[0],
            "--encoding",
            "utf-16",
        ],
        2,
        "looks like a binary",
    ),
    # issue 9, item 6: more tracebacks that are one line now
    Row("sample device foo", lambda d, _: ["sample", golden_run(d), "--device", "foo"], 2, "foo"),
    Row("out below a file", afile_sub, 2, "cannot create"),
    Row(
        "info on a config without model.cell",
        lambda d, _: ["info", golden_run(d, lambda c: c["model"].pop("cell"))],
        2,
        "bad model section (missing cell)",
    ),
    Row("unreadable file in a folder", unreadable_file_in_folder, 2, "b.txt: Permission denied"),
    Row("unreadable folder in a folder", unreadable_folder_in_folder, 2, "private: Permission denied"),
    Row("glob that matches nothing", lambda d, _: ["prepare", str(d / "nothing" / "*.txt")], 2, "no files match"),
]


def snapshot(folder: Path) -> dict[str, tuple[int, int] | None]:
    """Every file below ``folder`` with its (size, mtime in ns); every folder (None: taking a lock and
    letting it go touches a folder's own mtime)."""
    return {
        p.relative_to(folder).as_posix(): (p.lstat().st_size, p.lstat().st_mtime_ns) if p.is_file() else None
        for p in folder.rglob("*")
    }


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_bad_input(cli, tmp_path, monkeypatch, row: Row):
    work = tmp_path / "w"
    work.mkdir()
    args = row.setup(work, monkeypatch)
    before = snapshot(work)
    code, _out, err = cli(*args)
    assert code == row.code, err
    one_error_line(err, row.fragment)
    assert snapshot(work) == before, "a refused command changed files"
