"""The character vocabulary: exact round trips, tokenizers agreement, UNK."""

import numpy as np
import pytest
from tokenizers import Tokenizer

from chargen import ChargenError
from chargen.data.vocab import UNK, CharVocab, id_dtype
from conftest import HOSTILE


def test_round_trip_hostile_text(tmp_path):
    vocab = CharVocab.build(HOSTILE, with_unk=False)
    vocab.save(tmp_path / "tokenizer.json")
    # The saved file loads with plain tokenizers and decodes back exactly.
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    ids = tok.encode(HOSTILE).ids
    assert len(ids) == len(HOSTILE)  # one token per code point
    assert tok.decode(ids) == HOSTILE
    loaded = CharVocab.load(tmp_path / "tokenizer.json")
    assert loaded.decode(loaded.encode(HOSTILE)) == HOSTILE
    assert loaded.chars == vocab.chars


def test_every_character_is_its_own_token():
    vocab = CharVocab.build(HOSTILE, with_unk=False)
    ids = vocab.encode(HOSTILE)
    assert [vocab.chars[i] for i in ids] == list(HOSTILE)


def test_ids_in_code_point_order_and_deterministic():
    a = CharVocab.build("zyxabc\n ", with_unk=True)
    b = CharVocab.build(" \ncbaxyz", with_unk=True)
    assert a.chars == b.chars == [UNK, "\n", " ", "a", "b", "c", "x", "y", "z"]
    assert a.unk_id == 0


def test_bulk_ids_equal_tokenizers_ids():
    vocab = CharVocab.build(HOSTILE[: len(HOSTILE) // 2], with_unk=True)
    expected = vocab.tokenizer.encode(HOSTILE).ids
    got = vocab.encode_array(HOSTILE)
    assert got.dtype == np.uint8
    assert got.tolist() == expected
    assert vocab.unk_id in expected  # the second half has characters the first lacks


@pytest.mark.parametrize("normalize,lowercase", [("nfc", False), ("nfkc", True), ("none", True)])
def test_bulk_ids_equal_tokenizers_ids_with_normalization(normalize, lowercase):
    vocab = CharVocab.build(HOSTILE + "ABC", with_unk=True, normalize=normalize, lowercase=lowercase)
    text = "ÉCOLE e\u0301cole ﬁ Ⅻ " + HOSTILE
    assert vocab.encode_array(text).tolist() == vocab.tokenizer.encode(text).ids


def test_nfc_composes_combining_marks():
    vocab = CharVocab.build("é", with_unk=False, normalize="nfc")
    assert vocab.normalize("e\u0301") == "é"
    assert vocab.encode("e\u0301") == vocab.encode("é")


def test_unknown_characters_without_unk_are_an_error_naming_them():
    vocab = CharVocab.build("abc", with_unk=False)
    with pytest.raises(ChargenError, match=r"not in the vocabulary: 'x' 'é'; remove them"):
        vocab.encode_array("abxé")
    with pytest.raises(ChargenError, match="not in the vocabulary"):
        vocab.encode("abxé")
    assert vocab.unknown_chars("abxéx") == ["x", "é"]


def test_literal_unk_text_is_characters_not_the_unknown_token():
    vocab = CharVocab.build("<unk>", with_unk=True)
    ids = vocab.encode("<unk>")
    assert len(ids) == 5 and vocab.unk_id not in ids
    assert vocab.encode_array("<unk>").tolist() == ids


def test_smallest_dtype():
    assert id_dtype(256) == np.uint8
    assert id_dtype(257) == np.uint16
    assert id_dtype(65536) == np.uint16
    assert id_dtype(65537) == np.uint32
    big = CharVocab.build((chr(c) for c in range(0x4E00, 0x4E00 + 300)), with_unk=False)
    assert big.dtype == np.uint16
    text = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 300, 7))
    assert big.encode_array(text).tolist() == big.tokenizer.encode(text).ids


def test_load_rejects_garbage(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ChargenError, match="not a readable tokenizer"):
        CharVocab.load(bad)
    with pytest.raises(ChargenError, match="missing"):
        CharVocab.load(tmp_path / "absent.json")


def test_decode_accepts_lists_arrays_and_tensors_and_keeps_unk():
    import torch

    vocab = CharVocab.build("ab😀\n", with_unk=True)
    ids = vocab.encode("a😀\nb")
    for form in (ids, np.array(ids, dtype=np.uint8), torch.tensor(ids)):
        assert vocab.decode(form) == "a😀\nb"
    assert vocab.decode([vocab.unk_id, ids[0]]) == "<unk>a" == vocab.tokenizer.decode([vocab.unk_id, ids[0]])
    assert vocab.decode([]) == ""
