"""Format compatibility: a run folder made by an earlier chargen still loads, samples, evaluates
and resumes exactly as it did (see tests/fixtures/golden/README.md)."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import GOLDEN_DIR as GOLDEN

EXPECTED = json.loads((GOLDEN / "expected.json").read_text(encoding="utf-8"))


@pytest.fixture
def golden(tmp_path, monkeypatch):
    """A private copy of the golden run and its corpus; the working folder is that copy's."""
    shutil.copytree(GOLDEN / "run", tmp_path / "run")
    shutil.copy(GOLDEN / "corpus.txt", tmp_path / "corpus.txt")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("case", EXPECTED["samples"], ids=lambda c: " ".join(c["args"][2:]))
def test_golden_run_samples_the_same_text(golden, cli, case):
    code, out, err = cli(*case["args"])
    assert code == 0, err
    assert out == case["stdout"]


def test_golden_run_evaluates_to_the_same_loss(golden, cli):
    code, out, err = cli(*EXPECTED["eval"]["args"])
    assert code == 0, err
    result = json.loads(out)
    assert result["chars"] == EXPECTED["eval"]["chars"]
    assert result["nats"] == pytest.approx(EXPECTED["eval"]["nats"], abs=1e-6)


def test_golden_corpus_prepares_to_the_same_fingerprint(golden):
    from chargen import prepare

    config = json.loads((golden / "run" / "config.json").read_text(encoding="utf-8"))
    corpus = prepare("corpus.txt", **config["corpus"]["prepare"])
    assert corpus.fingerprint == config["corpus"]["fingerprint"]


def test_golden_run_resumes(golden, cli):
    code, _out, err = cli("train", "corpus.txt", "--out", "run", "--resume", "--max-steps", "8", "--no-progress")
    assert code == 0, err
    trainer = json.loads((golden / "run" / "last" / "trainer.json").read_text(encoding="utf-8"))
    assert trainer["step"] == 8
