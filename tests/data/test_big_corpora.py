"""Big corpora (issue 10): evaluation on a fixed sample, budgets that hold with evaluation included,
``chargen eval --split``, and no split ever read whole."""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import chargen
from chargen import ChargenError, Sampler, prepare
from chargen.model.scoring import Sample, SampleScorer, StreamScorer, streams_loss
from conftest import GOLDEN_DIR, one_error_line

TINY = dict(num_layers=1, hidden_size=16, batch_size=8, bptt=16, lr=1e-2, warmup_steps=0, preview_chars=0)


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    """About 200k characters; its validation split (20k) is far more than the samples below."""
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "its", "home"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) + "." for _ in range(7000)]
    p = tmp_path_factory.mktemp("big") / "t.txt"
    p.write_text("\n".join(lines) + "\n")
    return p


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def slow_evaluation(monkeypatch, seconds_per_chunk: float):
    """Every chunk of every evaluation takes at least this long (a big validation split, simulated)."""
    real = StreamScorer.__call__

    def slow(self, *args, **kwargs):
        time.sleep(seconds_per_chunk)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(StreamScorer, "__call__", slow)


# --------------------------------------------------------------------------- the sample


def test_every_evaluation_of_a_run_scores_the_same_sample_and_says_how_many(text, tmp_path):
    run = tmp_path / "run"
    chargen.train(text, out=run, max_steps=20, eval_every=10, eval_chars=3000, **TINY)
    evals = [r for r in rows(run) if "val_loss" in r]
    sample = Sample.plan(chargen.prepare(text).meta["val_chars"], 3000)
    assert [r["step"] for r in evals] == [10, 20]
    assert all(r["val_chars"] == sample.count for r in evals) and 3000 <= sample.count < 4100
    # the figure is the loss of exactly those characters
    model = Sampler.load(run, backend="torch").model
    corpus = chargen.prepare(text)
    total, n = streams_loss(model, corpus.val, corpus.train, chars=3000)
    assert evals[-1]["val_loss"] == pytest.approx(total / n, abs=1e-5)


def test_the_sample_is_the_same_on_resume(text, tmp_path):
    opts = dict(TINY, eval_every=10, eval_chars=2000, schedule="constant")
    chargen.train(text, out=tmp_path / "straight", max_steps=20, **opts)
    chargen.train(text, out=tmp_path / "resumed", max_steps=10, **opts)
    chargen.train(text, out=tmp_path / "resumed", resume=True, max_steps=20)
    straight = [(r["step"], r["val_loss"], r["val_chars"]) for r in rows(tmp_path / "straight") if "val_loss" in r]
    resumed = [(r["step"], r["val_loss"], r["val_chars"]) for r in rows(tmp_path / "resumed") if "val_loss" in r]
    assert straight == resumed


def test_the_sample_is_fixed_for_the_life_of_a_run(cli, text, tmp_path):
    chargen.train(text, out=tmp_path / "run", max_steps=5, eval_chars=2000, **TINY)
    code, _, err = cli("train", text, "--out", tmp_path / "run", "--resume", "--max-steps", "8", "--eval-chars", "all")
    assert code == 2
    one_error_line(err, "was created with --eval-chars 2000, not 0; every evaluation of a run scores the same sample")


@pytest.mark.parametrize(
    "value,fragment",
    [
        ("lots", "argument --eval-chars: must be a number of characters or all, got 'lots'"),
        ("-3", "argument --eval-chars: must be a number of characters or all, got '-3'"),
        ("1.5", "argument --eval-chars: must be a number of characters or all, got '1.5'"),
        ("+5", "must be a number of characters or all"),
        ("_1", "must be a number of characters or all"),
    ],
)
def test_odd_eval_chars_are_one_line(cli, text, tmp_path, value, fragment):
    code, _, err = cli("train", text, "--out", tmp_path / "run", "--eval-chars", value)
    assert code == 2
    one_error_line(err, fragment)
    assert not (tmp_path / "run").exists()


def test_eval_chars_all_scores_every_character(text, tmp_path):
    run = tmp_path / "run"
    chargen.train(text, out=run, max_steps=5, eval_chars="all", **TINY)
    assert json.loads((run / "config.json").read_text())["train"]["eval_chars"] == 0
    assert rows(run)[-2]["val_chars"] == chargen.prepare(text).meta["val_chars"]


def test_a_run_from_before_eval_chars_keeps_scoring_everything(tmp_path):
    from chargen.runs.folder import open_run_dir

    golden = GOLDEN_DIR / "run"
    assert "eval_chars" not in json.loads((golden / "config.json").read_text())["train"]
    assert open_run_dir(golden).train_config.eval_chars == 0


class CountingReads:
    """An id array that records every slice read from it."""

    def __init__(self, ids: np.ndarray):
        self.ids, self.reads = ids, []

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index):
        assert isinstance(index, slice), index
        self.reads.append(len(range(*index.indices(len(self.ids)))))
        return self.ids[index]


@pytest.mark.parametrize("chars", [None, 5000])
def test_evaluation_never_reads_a_split_whole(text, tmp_path, chars):
    chargen.train(text, out=tmp_path / "run", max_steps=2, **TINY)
    corpus = chargen.prepare(text)
    val = CountingReads(corpus.val)
    sample = Sample.plan(len(val), chars)
    _total, n = SampleScorer(val, corpus.train[-300:], sample, batch_size=4)(
        Sampler.load(tmp_path / "run", backend="torch").model
    )
    assert n == sample.count
    assert max(val.reads) <= 256 + 1 + sample.length < len(val) // 4  # one segment and its warm-up at a time
    assert sum(val.reads) <= sample.count + len(sample.starts) * 257


# --------------------------------------------------------------------------- budgets


def test_a_run_whose_evaluation_cannot_fit_stops_within_its_budget(text, tmp_path, monkeypatch):
    """The full evaluation takes about 8 s (simulated); the budget is 2 s: it is skipped, never run over."""
    slow_evaluation(monkeypatch, 0.5)
    run = tmp_path / "run"
    result = chargen.train(text, out=run, max_time="2s", eval_chars="all", eval_every=10**6, **TINY)
    assert result.stopped == "budget" and result.steps > 0
    assert result.elapsed <= 2.0 * 1.05 + 0.5, result.elapsed
    skipped = [r for r in rows(run) if r.get("event") == "eval_skipped"]
    assert len(skipped) == 1 and skipped[0]["reason"] == "time" and skipped[0]["estimate"] > skipped[0]["left"]
    assert (run / "model.safetensors").is_file() and (run / "last").is_dir()  # still a complete run
    assert chargen.train(text, out=run, resume=True, max_steps=result.steps + 2).steps == result.steps + 2


def test_a_budget_leaves_room_for_the_final_evaluation(text, tmp_path, monkeypatch):
    """An evaluation of about 1 s (simulated) fits in a 4 s budget: it runs at the end, inside the budget."""
    slow_evaluation(monkeypatch, 0.1)
    run = tmp_path / "run"
    result = chargen.train(text, out=run, max_time="4s", eval_chars=2000, eval_every=10**6, **TINY)
    assert result.stopped == "budget"
    assert 4.0 * 0.7 <= result.elapsed <= 4.0 * 1.05 + 0.3, result.elapsed
    final = [r for r in rows(run) if "val_loss" in r]
    assert len(final) == 1 and final[0]["step"] == result.steps and final[0]["eval_s"] >= 0.1, rows(run)[-3:]
    assert not [r for r in rows(run) if r.get("event") == "eval_skipped"]


def test_periodic_evaluations_that_would_crowd_out_the_final_one_are_skipped(text, tmp_path, monkeypatch):
    slow_evaluation(monkeypatch, 0.1)
    run = tmp_path / "run"
    result = chargen.train(text, out=run, max_time="6s", eval_chars=2000, eval_every=5, **TINY)
    assert result.elapsed <= 6.0 * 1.05 + 0.3, result.elapsed
    final = [r for r in rows(run) if "val_loss" in r][-1]
    assert final["step"] == result.steps  # the final evaluation ran


# --------------------------------------------------------------------------- chargen eval --split


@pytest.fixture
def trained(text, tmp_path) -> Path:
    chargen.train(text, out=tmp_path / "run", max_steps=10, test_fraction=0.05, eval_chars=1000, **TINY)
    return tmp_path / "run"


@pytest.mark.parametrize("split", ["val", "test"])
def test_eval_split_is_the_exact_full_figure(cli, text, trained, split):
    corpus = prepare(text, test_fraction=0.05)
    ids = corpus.ids(split)
    total, n = streams_loss(Sampler.load(trained, backend="torch").model, ids, corpus.before(split, 1000))
    code, out, err = cli("eval", trained, "--split", split, "--json", "--batch-size", "3")
    assert code == 0, err
    got = json.loads(out)
    assert got["chars"] == n == len(ids) and got["split"] == split
    assert got["nats"] == pytest.approx(total / n, rel=1e-9)


def test_eval_split_prepares_the_corpus_again_when_the_cache_is_gone(cli, text, trained, isolated_cache):
    code, out, _ = cli("eval", trained, "--split", "val", "--json")
    shutil.rmtree(isolated_cache / "prepared")
    code2, out2, err = cli("eval", trained, "--split", "val", "--json")
    assert code == code2 == 0, err
    assert json.loads(out) == json.loads(out2)


def test_eval_split_refuses_a_changed_source(cli, text, trained, isolated_cache, tmp_path):
    shutil.rmtree(isolated_cache / "prepared")
    changed = tmp_path / "changed.txt"
    changed.write_text(text.read_text().replace("cat", "cow"))
    code, _, err = cli("eval", trained, "--split", "val", "--source", changed)
    assert code == 2
    one_error_line(err, "this corpus differs from the run's")


@pytest.mark.parametrize(
    "args,fragment",
    [
        ([], "give a FILE to score, or --split val|test"),
        (["x.txt", "--split", "val"], "give a FILE to score, or --split val|test"),
        (["x.txt", "--batch-size", "4"], "--source and --batch-size go with --split"),
        (["--split", "train"], "argument --split: invalid choice"),
        (["--split", "val", "--batch-size", "0"], "argument --batch-size: must be in [1, 1048576]"),
    ],
)
def test_eval_argument_mistakes_are_one_line(cli, trained, args, fragment):
    code, out, err = cli("eval", trained, *args)
    assert code == 2 and out == ""
    one_error_line(err, fragment)


def test_eval_of_a_split_the_corpus_lacks_is_one_line(cli, text, tmp_path):
    chargen.train(text, out=tmp_path / "run", max_steps=3, **TINY)
    code, _, err = cli("eval", tmp_path / "run", "--split", "test")
    assert code == 2
    one_error_line(err, "has no test split (0 characters)")


def test_score_split_refuses_another_corpus(text, trained, tmp_path):
    other = tmp_path / "o.txt"
    other.write_text("completely different letters: XYZ QRS\n" * 300)
    with pytest.raises(ChargenError, match="vocabulary is not the model's"):
        Sampler.load(trained, backend="torch").score_split(prepare(other), "val")


def test_upload_in_chunks_equals_the_ids(tmp_path):
    from chargen.data.batches import upload_ids

    ids = np.random.default_rng(0).integers(0, 300, size=100_003).astype(np.uint16)
    path = tmp_path / "ids.bin"
    ids.tofile(path)
    mm = np.memmap(path, dtype=np.uint16, mode="r")
    got = upload_ids(mm, torch.device("cpu"), chunk=4096)
    assert got.dtype == torch.int32 and torch.equal(got, torch.from_numpy(ids.astype(np.int32)))


@pytest.mark.parametrize(
    "line,fragment",
    [
        ('eval_chars = "0x10"', "c.toml: eval_chars must be a number of characters or all, got '0x10'"),
        ("eval_chars = 1.5", "c.toml: eval_chars must be a whole number"),
        ('max_time = "soon"', "c.toml: max_time must be a duration"),
    ],
)
def test_odd_toml_values_name_the_key_once(cli, text, tmp_path, line, fragment):
    (tmp_path / "c.toml").write_text(line + "\n")
    code, _, err = cli("train", text, "--out", tmp_path / "run", "--config", tmp_path / "c.toml")
    assert code == 2
    one_error_line(err, fragment)


def test_eval_chars_and_max_time_from_python_name_the_option(text, tmp_path):
    with pytest.raises(ChargenError, match="^--eval-chars must be a number of characters or all, got 'x'$"):
        chargen.train(text, out=tmp_path / "run", eval_chars="x")
    with pytest.raises(ChargenError, match="^--max-time must be a duration"):
        chargen.train(text, out=tmp_path / "run", max_time="soon")
    assert not (tmp_path / "run").exists()


def test_a_budget_too_small_for_one_step_is_one_line_and_leaves_no_run(cli, text, tmp_path):
    code, _, err = cli(
        "train", text, "--out", tmp_path / "run", "--layers", "1", "--hidden", "16", "--max-time", "0.05s"
    )
    assert code == 2
    one_error_line(err, "--max-time 0.05s leaves no time to train", "give a larger budget")
    assert not (tmp_path / "run").exists()


def test_eval_split_finds_the_corpus_under_another_name(cli, text, trained, isolated_cache, tmp_path):
    code, before, _ = cli("eval", trained, "--split", "val", "--json")
    shutil.rmtree(isolated_cache / "prepared")
    moved = tmp_path / "elsewhere" / "renamed.txt"
    moved.parent.mkdir()
    shutil.copy(text, moved)
    code2, after, err = cli("eval", trained, "--split", "val", "--json", "--source", moved)
    assert code == code2 == 0, err
    assert json.loads(before) == json.loads(after)


def test_the_probe_times_a_warm_chunk_not_the_first_call(text, tmp_path, monkeypatch):
    """The first chunk of an evaluation pays one-time costs; estimated from it, a short --max-time budget could
    skip every evaluation and keep no best (seen in a loaded CI run of the GPU check's dry run)."""
    chargen.train(text, out=tmp_path / "run", max_steps=2, **TINY)
    model = Sampler.load(tmp_path / "run", backend="torch").model
    corpus = chargen.prepare(text)
    scorer = SampleScorer(corpus.val, corpus.train[-300:], Sample.plan(len(corpus.val), 5000), batch_size=4)
    assert scorer.chunks >= 2
    real, calls = StreamScorer.__call__, []

    def cold_first(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(1.0)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(StreamScorer, "__call__", cold_first)
    scorer.probe(model)
    assert len(calls) == 2 and scorer.seconds_per_chunk is not None and scorer.seconds_per_chunk < 0.5
