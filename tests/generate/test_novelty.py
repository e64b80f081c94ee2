"""Novelty (issue 33, item 3): the longest stretch of a text found in the run's training text, by a suffix
array stored beside the prepared corpus; ``chargen sample --novelty`` and ``--max-copy``."""

import random
import shutil
import sys

import numpy as np
import pytest

pytest.importorskip("pydivsufsort", reason="the novelty extra is not installed")

from chargen import ChargenError, Sampler
from chargen.data.suffix import SA_FILE, SuffixIndex, build_suffix_array, suffix_index
from chargen.generate.novelty import _indexes, generate_novel
from chargen.runs.corpus import run_corpus
from chargen.runs.folder import open_run_dir
from chargen.training.trainer import train
from conftest import TINY, one_error_line


def brute_force(text: list[int], query: list[int]) -> int:
    """The longest stretch of ``query`` (no negative ids in it) that occurs in ``text``, by trying all."""
    joined = "," + ",".join(map(str, text)) + ","
    best = 0
    for i in range(len(query)):
        for j in range(i + best + 1, len(query) + 1):
            part = query[i:j]
            if min(part) < 0 or "," + ",".join(map(str, part)) + "," not in joined:
                break
            best = j - i
    return best


def test_the_longest_copy_is_the_brute_force_one_and_really_occurs():
    rng = np.random.default_rng(0)
    for _ in range(300):
        text = rng.integers(0, int(rng.integers(1, 5)), int(rng.integers(1, 80))).astype(np.uint8)
        query = rng.integers(-1, 5, int(rng.integers(0, 40)))
        length, offset = SuffixIndex(text, build_suffix_array(text)).longest_copy(query)
        assert length == brute_force(text.tolist(), query.tolist()), (text, query)
        if length:
            copied = text[offset : offset + length].tolist()
            assert any(query[i : i + length].tolist() == copied for i in range(len(query) - length + 1))
        else:
            assert offset == 0


def test_a_query_that_is_all_of_the_text_or_none_of_it():
    text = np.array([1, 2, 3, 1, 2, 3, 4], dtype=np.uint8)
    index = SuffixIndex(text, build_suffix_array(text))
    assert index.longest_copy(text.astype(np.int64)) == (7, 0)
    assert index.longest_copy(np.array([9, 9, -1, 8])) == (0, 0)
    assert index.longest_copy(np.array([], dtype=np.int64)) == (0, 0)
    assert index.longest_copy(np.array([3, 4, 9])) == (2, 5)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("novelty")
    rng = random.Random(1)
    words = ["wind", "river", "stone", "light", "under", "over", "the", "a", "slow", "bright", "falls", "sings"]
    text = "\n".join(" ".join(rng.choice(words) for _ in range(7)) for _ in range(1500)) + "\n"
    (d / "corpus.txt").write_text(text)
    train(d / "corpus.txt", out=d / "run", max_steps=40, cache_dir=d / "cache", **TINY)  # the module's own cache
    return d / "run"


@pytest.fixture(autouse=True)
def fresh_indexes(run, monkeypatch):
    monkeypatch.setenv("CHARGEN_CACHE", str(run.parent / "cache"))
    _indexes.clear()  # each test builds or reads the index itself
    yield
    _indexes.clear()


def training_text(run) -> str:
    corpus = run_corpus(open_run_dir(run))
    return corpus.vocab.decode(corpus.ids("train"))


def test_an_excerpt_of_the_training_text_is_found_whole_where_it_is(run):
    s = Sampler.load(run)
    train_text = training_text(run)
    for start in (0, 1234, len(train_text) - 300):
        excerpt = train_text[start : start + 300]
        length, offset = s.longest_copy(excerpt)
        assert length == 300 and train_text[offset : offset + 300] == excerpt
    mixed = "zzzq" + train_text[500:540] + "QQQ"  # 40 characters copied, inside text that is not
    length, offset = s.longest_copy(mixed)
    assert length == 40 and train_text[offset : offset + 40] == train_text[500:540]
    assert s.longest_copy("ZQXJ€") == (0, 0)  # not one of these characters is in the vocabulary


def test_the_suffix_array_is_kept_beside_the_corpus_and_a_damaged_one_is_built_again(run):
    corpus = run_corpus(open_run_dir(run))
    path = corpus.dir / SA_FILE
    first = np.array(suffix_index(corpus).sa)
    assert path.is_file() and isinstance(suffix_index(corpus).sa, np.memmap)  # read back, mapped
    stored = np.load(path)
    np.save(path, stored[::-1].copy())  # the same numbers in the wrong order
    assert np.array_equal(suffix_index(corpus).sa, first)
    path.write_bytes(b"not an array")
    assert np.array_equal(suffix_index(corpus).sa, first)


def test_both_backends_agree(run):
    text = training_text(run)[2000:2100] + "!!" + training_text(run)[50:70]
    assert Sampler.load(run, backend="numpy").longest_copy(text) == Sampler.load(run, backend="torch").longest_copy(
        text
    )


def test_the_training_text_gone_is_one_error(run, tmp_path, monkeypatch):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    monkeypatch.setenv("CHARGEN_CACHE", str(tmp_path / "empty-cache"))  # not in the cache
    shutil.move(run.parent / "corpus.txt", tmp_path / "moved.txt")  # and not where it was
    try:
        with pytest.raises(ChargenError, match=r"needs the run's training text, which is gone \(.*corpus.txt"):
            Sampler.load(copy).longest_copy("the river")
    finally:
        shutil.move(tmp_path / "moved.txt", run.parent / "corpus.txt")


def test_a_sampler_made_in_memory_has_no_training_text():
    from chargen.data.vocab import CharVocab
    from chargen.model.network import CharRNN, ModelConfig

    s = Sampler(
        CharRNN(ModelConfig(vocab_size=3, num_layers=1, hidden_size=4)), CharVocab.build("ab\n", with_unk=False)
    )
    with pytest.raises(ChargenError, match="needs a sampler loaded from a run folder"):
        s.longest_copy("ab")


def test_first_draws_are_generates_own_and_redraws_only_copy_less(run):
    s = Sampler.load(run)
    plain = s.generate("the ", length=60, n=3, seed=5)
    first = generate_novel(s, "the ", s._options("the ", None, dict(length=60, n=3, seed=5)))
    assert [r.text for r in first] == plain and all(r.tries == 1 and r.met for r in first)
    assert [(r.copied, r.offset) for r in first] == [s.longest_copy(t) for t in plain]
    strict = generate_novel(s, "the ", s._options("the ", None, dict(length=60, n=3, seed=5)), max_copy=0, tries=4)
    for before, after in zip(first, strict):
        assert after.copied <= before.copied and after.tries == 4 and not after.met  # nothing copies 0 here
        assert s.longest_copy(after.text)[0] == after.copied
    with pytest.raises(ChargenError, match="max_copy must be a whole number"):
        generate_novel(s, "", s._options("", None, {}), max_copy=-1)


def test_the_cli_prints_the_sample_then_its_copy(run, cli):
    code, out, err = cli("sample", run, "--prompt", "the ", "--length", "80", "--seed", "3")
    code2, out2, err2 = cli("sample", run, "--prompt", "the ", "--length", "80", "--seed", "3", "--novelty")
    assert code == code2 == 0 and out2 == out  # the same sample
    length, offset = Sampler.load(run).longest_copy(out[len("the ") : -1])
    assert (
        err2
        == f"novelty: longest stretch also in the training text: {length:,} characters, from its character {offset:,}\n"
    )
    code, out, err = cli(
        "sample", run, "--length", "80", "-n", "2", "--seed", "3", "--max-copy", "1", "--max-tries", "3"
    )
    assert code == 0 and out.count("----- sample") == 2
    lines = err.splitlines()
    assert len(lines) == 2 and all(
        "; every one of 3 draws copied more than 1: this is the least copied" in x for x in lines
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["--max-tries", "3"], "--max-tries counts the draws of --max-copy; pass --max-copy N with it"),
        (["--max-copy", "-1"], "argument --max-copy: must be in [0,"),
        (["--max-copy", "2", "--max-tries", "0"], "argument --max-tries: must be in [1, 1000], got 0"),
    ],
)
def test_bad_novelty_flags(run, cli, args, message):
    code, out, err = cli("sample", run, *args)
    assert code == 2 and out == ""
    one_error_line(err, message)


def test_without_pydivsufsort_it_says_what_to_install(run, tmp_path, monkeypatch):
    corpus = run_corpus(open_run_dir(run))
    (corpus.dir / SA_FILE).unlink(missing_ok=True)
    monkeypatch.setitem(sys.modules, "pydivsufsort", None)
    with pytest.raises(ChargenError, match=r'needs pydivsufsort: pip install "chargen\[novelty\]"'):
        Sampler.load(run).longest_copy("the")
