"""prepare(): split sizes, vocabulary from training text, exact ids, the cache."""

import os

import numpy as np
import pytest

from chargen import ChargenError, prepare
from chargen.data.vocab import CharVocab
from conftest import HOSTILE


def write(tmp_path, text, name="corpus.txt"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_ids_decode_back_to_the_whole_text(tmp_path):
    text = HOSTILE * 20
    c = prepare(write(tmp_path, text), val_fraction=0.2, test_fraction=0.1)
    ids = np.concatenate([c.train, c.val, c.test])
    assert len(ids) == len(text) == c.meta["chars"]
    assert c.vocab.decode(ids) == text  # every character was in the training part
    assert c.meta["unknown_chars"] == 0 and c.vocab.unk_id is None
    # and the bulk ids are what tokenizers itself gives
    assert ids.tolist() == c.vocab.tokenizer.encode(text).ids


def test_contiguous_split_sizes(tmp_path):
    c = prepare(write(tmp_path, "abcdefghij" * 100), val_fraction=0.1, test_fraction=0.05)
    assert (c.meta["train_chars"], c.meta["val_chars"], c.meta["test_chars"]) == (850, 100, 50)
    assert c.vocab.decode(c.val) == ("abcdefghij" * 100)[850:950]


def test_standard_tinyshakespeare_split(corpora_dir):
    c = prepare("tinyshakespeare", corpora_dirs=[corpora_dir])
    s = c.summary()
    assert (s["chars"], s["train_chars"], s["val_chars"], s["test_chars"]) == (1115394, 1003854, 111540, 0)
    assert s["vocab_size"] == 65 and s["unknown_chars"] == 0 and c.train.dtype == np.uint8
    text = (corpora_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")
    assert c.vocab.decode(c.val) == text[1003854:]
    assert isinstance(c.train, np.memmap)


def test_vocabulary_comes_from_training_text_only(tmp_path):
    text = "aaaa bbbb\n" * 9 + "xyz zyx\n" + "a" * 2  # x, y, z appear only in the validation tail
    c = prepare(write(tmp_path, text), val_fraction=0.1)
    assert "x" not in c.vocab.chars and c.vocab.unk_id == 0
    val_text = text[c.meta["train_chars"] :]
    unknown = sum(val_text.count(ch) for ch in "xyz")
    assert c.meta["unknown_chars"] == unknown > 0
    assert c.meta["unknown_by_split"] == {"train": 0, "val": unknown, "test": 0}
    assert int((c.val == c.vocab.unk_id).sum()) == unknown


def test_min_char_count_maps_rare_characters_to_unk(tmp_path):
    text = "ab" * 50 + "c" * 2 + "\n"
    c = prepare(write(tmp_path, text), val_fraction=0.0, min_char_count=3)
    assert c.vocab.chars == ["<unk>", "\n", "a", "b"] or c.vocab.chars == ["<unk>", "a", "b"]
    assert c.meta["unknown_chars"] == 3  # "c", "c" and the single newline


def test_normalization_and_lowercase_apply_to_ids(tmp_path):
    text = "E\u0301COLE école\n" * 10
    c = prepare(write(tmp_path, text), normalize="nfc", lowercase=True, val_fraction=0.0)
    assert c.vocab.decode(c.train) == "école école\n" * 10
    assert "E" not in c.vocab.chars and "\u0301" not in c.vocab.chars
    # the saved tokenizer normalizes prompts the same way
    again = CharVocab.load(c.dir / "tokenizer.json")
    assert again.encode("ÉCOLE") == again.encode("école")


def test_cache_reused_when_nothing_changes(tmp_path):
    p = write(tmp_path, "some text to cache\n" * 20)
    first = prepare(p)
    second = prepare(p)
    assert not first.reused and second.reused
    assert first.dir == second.dir and first.fingerprint == second.fingerprint


@pytest.mark.parametrize(
    "option",
    [
        dict(val_fraction=0.2),
        dict(lowercase=True),
        dict(normalize="nfkc"),
        dict(min_char_count=2),
        dict(test_fraction=0.1),
        dict(errors="replace"),
    ],
)
def test_any_option_change_prepares_again(tmp_path, option):
    p = write(tmp_path, "Some Text to cache\n" * 20)
    base = prepare(p)
    changed = prepare(p, **option)
    assert not changed.reused and changed.fingerprint != base.fingerprint


def test_source_change_prepares_again(tmp_path):
    p = write(tmp_path, "version one\n" * 20)
    first = prepare(p)
    p.write_text("version two\n" * 20)
    second = prepare(p)
    assert not second.reused and second.fingerprint != first.fingerprint
    assert second.vocab.decode(second.train).startswith("version two")


def test_corrupt_cache_is_rebuilt(tmp_path):
    p = write(tmp_path, "text that will be truncated\n" * 20)
    first = prepare(p)
    with open(first.dir / "ids.bin", "r+b") as f:
        f.truncate(10)
    again = prepare(p)
    assert not again.reused and len(again.train) == first.meta["train_chars"]


def test_failed_prepare_leaves_no_folder(tmp_path, isolated_cache):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"good text\n" * 100 + b"\xff\xfe")
    with pytest.raises(ChargenError, match="undecodable byte at offset 1000"):
        prepare(bad)
    prepared = isolated_cache / "prepared"
    assert not prepared.exists() or list(prepared.iterdir()) == []


def test_empty_inputs(tmp_path):
    with pytest.raises(ChargenError, match="is empty; pass a source that holds text"):
        prepare(write(tmp_path, ""))
    with pytest.raises(ChargenError, match="only 1 characters"):
        prepare(write(tmp_path, "a", "one.txt"), val_fraction=0.0)


def test_bad_options():
    with pytest.raises(ChargenError, match="must be below 1"):
        prepare("x", val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(ChargenError, match="'klingon' is an unknown encoding"):
        prepare("x", encoding="klingon")
    with pytest.raises(ChargenError, match="min-char-count must be at least 1"):
        prepare("x", min_char_count=0)


def test_ids_use_uint16_for_large_vocabularies(tmp_path):
    text = "".join(chr(0x4E00 + i) for i in range(400)) * 3
    c = prepare(write(tmp_path, text), val_fraction=0.0)
    assert c.train.dtype == np.uint16 and c.meta["vocab_size"] == 400
    assert c.vocab.decode(c.train) == text
    assert os.path.getsize(c.dir / "ids.bin") == 2 * len(text)
