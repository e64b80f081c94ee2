"""Shared fixtures: an isolated cache, the shared test corpora, a CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chargen.cli import main

REPO = Path(__file__).resolve().parent.parent
HOSTILE = ("plain ascii, then  two spaces\n\ttab\r\nCRLF\n"
           "日本語のテキスト 中文 한국어\n"
           "emoji 😀🎉👩‍👩‍👧 flags 🇫🇷\n"
           "combining: e\u0301 a\u0308 n\u0303 (decomposed) é ä ñ (precomposed)\n"
           "zero width \u200b joiner \u200d nbsp \u00a0 bom \ufeff rtl \u05e9\u05dc\u05d5\u05dd\n"
           "<unk> is just text here\n")


def shared_corpora() -> Path | None:
    """The folder holding tinyshakespeare.txt: $CHARGEN_CORPORA or ../shared/corpora."""
    for d in os.environ.get("CHARGEN_CORPORA", "").split(os.pathsep) + [str(REPO.parent / "shared" / "corpora")]:
        if d and (Path(d) / "tinyshakespeare.txt").is_file():
            return Path(d)
    return None


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own cache, and downloads are off unless a test turns them on."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("CHARGEN_CACHE", str(cache))
    monkeypatch.setenv("CHARGEN_OFFLINE", "1")
    return cache


@pytest.fixture
def corpora_dir() -> Path:
    d = shared_corpora()
    if d is None:
        pytest.skip("tinyshakespeare.txt not found (set CHARGEN_CORPORA or put ../shared/corpora beside the repo)")
    return d


@pytest.fixture
def cli(capsys):
    """Run ``chargen ARGS`` in-process; returns (exit status, stdout, stderr)."""
    def run(*args: str):
        capsys.readouterr()  # only this command's output
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse exits on usage errors and --help
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err
    return run
