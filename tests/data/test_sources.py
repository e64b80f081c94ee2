"""Resolving sources: files, folders, globs, the registry, downloads, hf: files."""

import hashlib
import json

import pytest

from chargen import ChargenError
from chargen.data import sources as corpus_mod
from chargen.data.registry import find_named_corpus, registry, stdlib_files
from chargen.data.sources import DOCUMENT_SEPARATOR, resolve_source
from chargen.files import read_text_pieces


def text_of(src, **kw) -> str:
    return "".join(src.pieces(**kw))


def test_file_source_reads_exactly(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("hello\nworld\n", encoding="utf-8")
    assert text_of(resolve_source(str(p))) == "hello\nworld\n"


def test_pieces_end_at_newlines_and_rejoin_exactly(tmp_path):
    text = "".join(f"line {i} ünïcödé 😀\n" for i in range(500)) + "tail without newline"
    p = tmp_path / "a.txt"
    p.write_text(text, encoding="utf-8")
    pieces = list(read_text_pieces(p, chunk_bytes=37))  # cuts inside multi-byte characters
    assert "".join(pieces) == text
    assert all(piece.endswith("\n") for piece in pieces[:-1])


def test_folder_sorted_with_documented_separator_and_binary_skipped(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.md").write_text("third\n")
    (tmp_path / ".hidden.txt").write_text("never\n")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\x00\x01\x02")
    src = resolve_source(str(tmp_path))
    assert [p.name for p in src.files] == ["a.txt", "b.txt", "c.md"]
    sep = DOCUMENT_SEPARATOR
    assert text_of(src) == "first\n" + sep + "second\n" + sep + "third\n"


def test_glob_source(tmp_path):
    for name in ("x1.txt", "x2.txt", "y.txt"):
        (tmp_path / name).write_text(name + "\n")
    src = resolve_source(str(tmp_path / "x*.txt"))
    assert text_of(src) == "x1.txt\n\nx2.txt\n"


def test_strict_decoding_error_names_file_and_offset(tmp_path):
    p = tmp_path / "bad.txt"
    data = ("é" * 40).encode() + b"\xff" + b"rest\n"  # bad byte at offset 80
    p.write_bytes(data)
    for chunk in (7, 16, 1 << 20):  # the offset is right whatever the chunking
        with pytest.raises(ChargenError, match=r"bad.txt is not valid utf-8: undecodable byte at offset 80;"):
            list(read_text_pieces(p, chunk_bytes=chunk))
    assert text_of(resolve_source(str(p)), errors="replace").startswith("é" * 40 + "\ufffd")
    assert text_of(resolve_source(str(p)), encoding="latin-1").startswith("Ã©")


def test_binary_file_is_an_error(tmp_path):
    p = tmp_path / "blob.txt"
    p.write_bytes(b"abc\x00def")
    with pytest.raises(ChargenError, match=r"looks like a binary file \(NUL byte at offset 3\)"):
        list(read_text_pieces(p))


def test_stdlib_files_exclude_tests_and_site_packages():
    root, files = stdlib_files()
    rels = [p.relative_to(root).as_posix() for p in files]
    assert rels == sorted(rels) and len(rels) > 100
    assert "os.py" in rels and "json/decoder.py" in rels
    assert not any(part in ("test", "tests", "site-packages", "idle_test") for r in rels for part in r.split("/"))
    assert resolve_source(None).kind == "pystdlib"


def test_registry_lists_required_corpora():
    reg = registry()
    ts = reg["tinyshakespeare"]
    assert ts["sha256"] == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    assert ts["val_fraction"] == 0.1 and ts["test_fraction"] == 0.0
    for entry in reg.values():
        assert {"license", "val_fraction", "test_fraction", "description"} <= entry.keys()
        assert entry.get("builtin") or {"url", "sha256", "size", "filename"} <= entry.keys()


def _fake_entry(monkeypatch, content: bytes, url: str):
    entry = {
        "description": "test",
        "filename": "fake.txt",
        "url": url,
        "sha256": hashlib.sha256(content).hexdigest(),
        "size": len(content),
        "license": "test",
        "val_fraction": 0.2,
        "test_fraction": 0.0,
    }
    monkeypatch.setitem(registry(), "fakecorpus", entry)
    return entry


def test_named_corpus_found_on_search_path_in_order(tmp_path, monkeypatch):
    content = b"some text\n" * 10
    _fake_entry(monkeypatch, content, "file:///nonexistent")
    first, second = tmp_path / "first", tmp_path / "second"
    for d in (first, second):
        d.mkdir()
        (d / "fake.txt").write_bytes(content)
    monkeypatch.setenv("CHARGEN_CORPORA", str(second))
    assert find_named_corpus("fakecorpus", corpora_dirs=[first]) == first / "fake.txt"
    assert find_named_corpus("fakecorpus") == second / "fake.txt"
    src = resolve_source("fakecorpus")
    assert src.val_fraction == 0.2


def test_named_corpus_with_wrong_checksum_is_refused(tmp_path, monkeypatch):
    _fake_entry(monkeypatch, b"the real text\n", "file:///nonexistent")
    (tmp_path / "fake.txt").write_bytes(b"an edited copy\n")
    with pytest.raises(ChargenError, match="fake.txt has sha256 .* but fakecorpus should have"):
        find_named_corpus("fakecorpus", corpora_dirs=[tmp_path])


def test_download_verifies_checksum_and_is_cached(tmp_path, monkeypatch, isolated_cache):
    content = "downloaded ünïcode\n".encode() * 50
    remote = tmp_path / "remote.txt"
    remote.write_bytes(content)
    _fake_entry(monkeypatch, content, remote.as_uri())
    path = find_named_corpus("fakecorpus", offline=False)
    assert path == isolated_cache / "corpora" / "fake.txt"
    assert path.read_bytes() == content
    remote.unlink()  # the second lookup must not download again
    assert find_named_corpus("fakecorpus", offline=False) == path


def test_download_with_bad_checksum_leaves_nothing(tmp_path, monkeypatch, isolated_cache):
    remote = tmp_path / "remote.txt"
    remote.write_bytes(b"tampered\n")
    entry = _fake_entry(monkeypatch, b"original\n", remote.as_uri())
    with pytest.raises(ChargenError, match="has sha256 .* expected"):
        find_named_corpus("fakecorpus", offline=False)
    assert list((isolated_cache / "corpora").iterdir()) == []
    assert entry["filename"] == "fake.txt"


def test_failed_download_says_where_to_put_the_file(tmp_path, monkeypatch, isolated_cache):
    _fake_entry(monkeypatch, b"x", (tmp_path / "missing.txt").as_uri())
    with pytest.raises(ChargenError, match=r"could not download fakecorpus .*; put fake.txt in one of: .*corpora"):
        find_named_corpus("fakecorpus", offline=False)
    with pytest.raises(ChargenError, match=r"downloads are off; put fake.txt in one of"):
        find_named_corpus("fakecorpus", offline=True)
    assert list((isolated_cache / "corpora").iterdir()) == []


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_hf_local_files(tmp_path, fmt):
    pytest.importorskip("datasets", reason="hf: sources need datasets (chargen[train])")
    docs = ["first document\nwith two lines", 'second, with "quotes" and ünïcode', "third\n"]
    path = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    else:
        import pandas as pd

        frame = pd.DataFrame({"text": docs, "id": range(3)})
        frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path)
    src = resolve_source(f"hf:{path}")
    expected = 'first document\nwith two lines\n\nsecond, with "quotes" and ünïcode\n\nthird\n'
    assert text_of(src) == expected
    bad = resolve_source(f"hf:{path}", text_column="body")
    with pytest.raises(ChargenError, match=r"has no column 'body' \(columns: .*text.*\); pass --text-column"):
        text_of(bad)


def test_hf_non_text_column_is_an_error(tmp_path):
    pytest.importorskip("datasets", reason="hf: sources need datasets (chargen[train])")
    path = tmp_path / "d.jsonl"
    path.write_text('{"n": 1}\n{"n": 2}\n')
    with pytest.raises(ChargenError, match="holds int values, not text"):
        text_of(resolve_source(f"hf:{path}", text_column="n"))


def test_unknown_name_lists_known_corpora():
    with pytest.raises(ChargenError, match=r"unknown corpus 'nosuch'.*\(pystdlib, tinyshakespeare\)"):
        resolve_source("nosuch")
    assert corpus_mod.DEFAULT_SOURCE == "pystdlib"


def test_utf16_files_are_read_through_the_incremental_decoder(tmp_path):
    text = "".join(f"línea {i} 😀\n" for i in range(300))
    p = tmp_path / "u16.txt"
    p.write_bytes(text.encode("utf-16"))
    pieces = list(read_text_pieces(p, encoding="utf-16", chunk_bytes=41))
    assert "".join(pieces) == text
    assert all(piece.endswith("\n") for piece in pieces[:-1])


def test_a_line_longer_than_a_chunk_is_cut_at_a_character_boundary(tmp_path):
    text = "ü😀x" * 1000 + "\nend"
    p = tmp_path / "long.txt"
    p.write_text(text, encoding="utf-8")
    pieces = list(read_text_pieces(p, chunk_bytes=64))
    assert "".join(pieces) == text and len(pieces) > 10


def test_undecodable_offset_in_a_later_chunk(tmp_path):
    p = tmp_path / "late.txt"
    p.write_bytes(b"ok line\n" * 1000 + b"bad \xc3( here\n")
    with pytest.raises(ChargenError, match="undecodable byte at offset 8004;"):
        list(read_text_pieces(p, chunk_bytes=100))


@pytest.mark.parametrize("normalize", ["nfc", "nfkc"])
def test_a_line_longer_than_a_chunk_is_never_cut_inside_a_normalization(tmp_path, normalize):
    """Issue 8, item 9: 'e' + U+0301 split across two pieces stayed two code points under NFC."""
    import unicodedata

    from chargen.data.vocab import make_normalizer

    texts = [
        ("caf" + "e\u0301" + " " + "\u212b" + "x\u0308\u0323" + "ﬁ") * 50,  # one line, no newline
        unicodedata.normalize("NFD", "がぎぐげござじずぜぞ。") * 200,  # no ASCII at all
        unicodedata.normalize("NFD", "한국어텍스트입니다") * 200,  # Hangul jamo
        "x" + "\u0301\u0323" * 500,
    ]  # one unsplittable run
    norm = make_normalizer(normalize)
    for i, text in enumerate(texts):
        p = tmp_path / f"long{i}.txt"
        p.write_text(text, encoding="utf-8")
        for chunk in (5, 7, 11, 64, 1000):
            pieces = list(read_text_pieces(p, chunk_bytes=chunk))
            assert "".join(pieces) == text
            assert "".join(norm.normalize_str(x) for x in pieces) == norm.normalize_str(text), (i, chunk)


def test_a_hub_dataset_is_refused_offline_without_touching_the_network(monkeypatch):
    """Issue 8: hf: sources must honour CHARGEN_OFFLINE (the conftest sets it)."""
    with pytest.raises(ChargenError, match="hf:someone/some-dataset is not a local path, .* downloads are off"):
        resolve_source("hf:someone/some-dataset")
