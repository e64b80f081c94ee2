"""Unusual but legitimate inputs (issue 9): --overwrite that keeps the old run until the new one exists,
globs and folders with symbolic links, encodings other than UTF-8, byte-order marks, bounded downloads."""

from __future__ import annotations

import codecs
import hashlib
import http.server
import json
import os
import threading
from pathlib import Path

import pytest

import chargen
from chargen import ChargenError, prepare
from chargen import runs as runs_mod
from chargen.corpus import DOCUMENT_SEPARATOR, resolve_source
from chargen.files import read_text_pieces
from chargen.registry import find_named_corpus, registry
from chargen.rundir import LOCK_FILE

TEXT = "the quick brown fox jumps over the lazy dog\n" * 60
TINY = dict(num_layers=1, hidden_size=8, batch_size=4, bptt=8, preview_chars=0, warmup_steps=0)


def text_of(src, **kw) -> str:
    return "".join(src.pieces(**kw))


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- --overwrite


@pytest.fixture
def old_run(tmp_path) -> Path:
    (tmp_path / "c.txt").write_text(TEXT)
    chargen.train(tmp_path / "c.txt", out=tmp_path / "runs" / "r", max_steps=3, **TINY)
    return tmp_path / "runs" / "r"


def test_overwrite_that_fails_after_the_claim_leaves_the_old_run_whole(old_run, tmp_path):
    before = files_of(old_run)
    with pytest.raises(ChargenError, match="GiB to train"):  # the memory guard runs after the folder is claimed
        chargen.train(tmp_path / "c.txt", out=old_run, overwrite=True, max_steps=3,
                      **{**TINY, "hidden_size": 10**6, "num_layers": 50})
    assert files_of(old_run) == before
    assert os.listdir(old_run.parent) == ["r"]  # nothing built beside it is left


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_overwrite_that_fails_before_the_first_checkpoint_leaves_the_old_run_whole(old_run, tmp_path, monkeypatch,
                                                                                  error):
    from chargen.trainer import Trainer
    before = files_of(old_run)

    def fail(self):
        raise error
    monkeypatch.setattr(Trainer, "_step", fail)
    with pytest.raises(type(error)):
        chargen.train(tmp_path / "c.txt", out=old_run, overwrite=True, max_steps=5, **TINY)
    assert files_of(old_run) == before
    assert os.listdir(old_run.parent) == ["r"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two renames"])
def test_overwrite_replaces_the_run_whole_once_it_exists(old_run, tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(runs_mod, "_rename_exchange", lambda a, b: False)
    old_weights = (old_run / "model.safetensors").read_bytes()
    (old_run / "notes.txt").write_text("the old run's own file goes with it\n")
    result = chargen.train(tmp_path / "c.txt", out=old_run, overwrite=True, max_steps=4,
                           **{**TINY, "hidden_size": 12})
    assert Path(result.run_dir) == old_run
    assert os.listdir(old_run.parent) == ["r"]
    assert sorted(os.listdir(old_run)) == ["config.json", "last", "metrics.jsonl", "model.safetensors",
                                           "tokenizer.json"]  # and the lock is gone
    assert json.loads((old_run / "config.json").read_text())["model"]["hidden_size"] == 12
    assert (old_run / "model.safetensors").read_bytes() != old_weights
    rows = [json.loads(line) for line in (old_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r][-1] == 4 and rows[-1]["event"] == "stopped"
    assert chargen.Sampler.load(old_run).generate("the", length=10, seed=1)
    chargen.train(tmp_path / "c.txt", out=old_run, resume=True, max_steps=6)  # and it is a run to resume


def test_overwrite_through_a_symbolic_link_replaces_the_folder_it_names(old_run, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(old_run)
    chargen.train(tmp_path / "c.txt", out=link, overwrite=True, max_steps=3, **{**TINY, "hidden_size": 12})
    assert link.is_symlink() and link.resolve() == old_run.resolve()
    assert json.loads((old_run / "config.json").read_text())["model"]["hidden_size"] == 12
    assert os.listdir(old_run.parent) == ["r"]


def test_what_a_killed_overwrite_left_is_removed_by_the_next_one_but_not_what_is_in_use(old_run, tmp_path):
    stale = old_run.parent / ".r.new-abc123"
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    busy = old_run.parent / ".r.new-busy"
    busy.mkdir()
    holder = runs_mod.RunLock(busy)
    try:
        chargen.train(tmp_path / "c.txt", out=old_run, overwrite=True, max_steps=3, **TINY)
        assert sorted(os.listdir(old_run.parent)) == [".r.new-busy", "r"]
    finally:
        holder.release()


def test_the_overwritten_run_stays_locked_throughout(old_run, tmp_path, monkeypatch):
    """While the new run is built beside it, the old folder is held; after the swap, the new one is."""
    from chargen.trainer import Trainer
    seen = []
    real = Trainer._step

    def step_and_try(self):
        real(self)
        with pytest.raises(ChargenError, match="is in use"):
            runs_mod.RunLock(old_run)
        seen.append(self.run.dir == old_run)
    monkeypatch.setattr(Trainer, "_step", step_and_try)
    chargen.train(tmp_path / "c.txt", out=old_run, overwrite=True, max_steps=4, checkpoint_every=2, **TINY)
    assert seen == [False, False, True, True]  # built beside the old run until the checkpoint at step 2
    assert not (old_run / LOCK_FILE).exists()


# --------------------------------------------------------------------------- symbolic links and globs


@pytest.fixture
def looped(tmp_path) -> Path:
    d = tmp_path / "g" / "d"
    d.mkdir(parents=True)
    (d / "a.txt").write_text("x" * 2999 + "\n")
    (d / "loop").symlink_to(".")
    (d / "up").symlink_to("..")
    (d / "twin.txt").symlink_to("a.txt")
    return d


@pytest.mark.parametrize("pattern", ["g/d/**/*.txt", "g/**/*.txt", "g/d/**", "g/**", "g/*/*.txt", "g/d/*.txt"])
def test_a_glob_reads_each_file_once_through_looping_links(looped, tmp_path, monkeypatch, pattern):
    monkeypatch.chdir(tmp_path)
    src = resolve_source(pattern)
    assert len(src.files) == 1 and src.files[0].resolve() == (looped / "a.txt").resolve()
    assert text_of(src) == "x" * 2999 + "\n"


def test_a_folder_reads_each_file_once_through_looping_links(looped, tmp_path):
    for folder in (looped, tmp_path / "g"):
        src = resolve_source(folder)
        assert [p.resolve() for p in src.files] == [(looped / "a.txt").resolve()]


def test_a_linked_folder_is_read_but_hidden_names_are_not(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "b.txt").write_text("linked\n")
    corpus = tmp_path / "corpus"
    (corpus / ".git").mkdir(parents=True)
    (corpus / ".git" / "c.txt").write_text("hidden\n")
    (corpus / ".h.txt").write_text("hidden\n")
    (corpus / "a.txt").write_text("own\n")
    (corpus / "more").symlink_to(elsewhere)
    assert text_of(resolve_source(corpus)) == "own\n" + DOCUMENT_SEPARATOR + "linked\n"
    assert [p.name for p in resolve_source(str(corpus / "**" / "*.txt")).files] == ["a.txt", "b.txt"]
    assert [p.name for p in resolve_source(str(corpus / ".*.txt")).files] == [".h.txt"]


def test_glob_agrees_with_the_standard_library_where_there_are_no_links(tmp_path, monkeypatch):
    import glob
    for rel in ("a.txt", "b.md", "s/c.txt", "s/t/d.txt", "s/t/e.md", "u/f.txt", "[x].txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel + "\n")
    monkeypatch.chdir(tmp_path)
    for pattern in ("*.txt", "**/*.txt", "s/**/*.md", "s/*/*", "?.md", "**/[de].txt", "s/**", "[[]x].txt"):
        ours = [p.as_posix() for p in resolve_source(pattern).files]
        theirs = sorted((p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)), key=Path)
        assert ours == [Path(p).as_posix() for p in theirs], pattern


# --------------------------------------------------------------------------- encodings and byte-order marks


def test_a_folder_of_utf16_files_is_read_with_its_encoding(tmp_path):
    (tmp_path / "a.txt").write_text("first ünï\n", encoding="utf-16")
    (tmp_path / "b.txt").write_text("second 😀\n", encoding="utf-16")
    src = resolve_source(tmp_path, encoding="utf-16")
    assert [p.name for p in src.files] == ["a.txt", "b.txt"]
    assert text_of(src, encoding="utf-16") == "first ünï\n" + DOCUMENT_SEPARATOR + "second 😀\n"
    corpus = prepare(tmp_path, encoding="utf-16", val_fraction=0.0)
    assert corpus.meta["chars"] == len("first ünï\n\nsecond 😀\n")


def test_binary_files_are_still_skipped_in_a_utf16_folder(tmp_path):
    (tmp_path / "a.txt").write_text("text\n", encoding="utf-16")
    (tmp_path / "b.bin").write_bytes(codecs.BOM_UTF16_LE + b"\x00\x00" * 4)  # decodes to NUL characters
    assert [p.name for p in resolve_source(tmp_path, encoding="utf-16").files] == ["a.txt"]


def test_a_leading_utf8_bom_is_not_text(tmp_path):
    (tmp_path / "a.txt").write_bytes(codecs.BOM_UTF8 + "first\n".encode())
    (tmp_path / "b.txt").write_bytes(codecs.BOM_UTF8 + "sec\ufeffond\n".encode())  # only the leading one goes
    assert text_of(resolve_source(tmp_path)) == "first\n" + DOCUMENT_SEPARATOR + "sec\ufeffond\n"
    corpus = prepare(tmp_path / "a.txt", val_fraction=0.0)
    assert "\ufeff" not in corpus.vocab.chars and corpus.meta["chars"] == len("first\n")


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 5, 64])
def test_a_leading_bom_goes_at_any_chunk_size_and_offsets_stay_true(tmp_path, chunk):
    p = tmp_path / "a.txt"
    p.write_bytes(codecs.BOM_UTF8 + "ab\ncd\n".encode())
    assert "".join(read_text_pieces(p, chunk_bytes=chunk)) == "ab\ncd\n"
    p.write_bytes(codecs.BOM_UTF8 + b"ab\n\xffcd\n")
    with pytest.raises(ChargenError, match="undecodable byte at offset 6"):
        "".join(read_text_pieces(p, chunk_bytes=chunk))


def test_a_cache_from_the_reader_that_kept_the_bom_is_prepared_again(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes(codecs.BOM_UTF8 + TEXT.encode())
    first = prepare(p)
    meta = json.loads((first.dir / "meta.json").read_text())
    meta.pop("reader_version")
    (first.dir / "meta.json").write_text(json.dumps(meta))
    again = prepare(p)
    assert not again.reused and again.fingerprint == first.fingerprint


# --------------------------------------------------------------------------- downloads


class _Server:
    """A local HTTP server whose one answer a test sets: a body, and a Content-Length to announce (or none)."""

    def __init__(self):
        self.body, self.length, self.endless = b"", None, False
        self.sent = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                if server.length is not None:
                    self.send_header("Content-Length", str(server.length))
                self.end_headers()
                try:
                    while True:
                        self.wfile.write(server.body)
                        server.sent += len(server.body)
                        if not server.endless or server.sent > 1 << 26:  # a bound, whatever happens
                            break
                except OSError:  # the client hung up
                    pass

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/fake.txt"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _entry(monkeypatch, content: bytes, url: str) -> dict:
    entry = {"description": "test", "filename": "fake.txt", "url": url, "sha256": hashlib.sha256(content).hexdigest(),
             "size": len(content), "license": "test", "val_fraction": 0.1, "test_fraction": 0.0}
    monkeypatch.setitem(registry(), "fakecorpus", entry)
    return entry


def test_a_download_streams_and_verifies(server, monkeypatch, isolated_cache):
    content = TEXT.encode()
    _entry(monkeypatch, content, server.url)
    server.body, server.length = content, len(content)
    path = find_named_corpus("fakecorpus", offline=False)
    assert path.read_bytes() == content


def test_an_endless_download_stops_past_the_stated_size(server, monkeypatch, isolated_cache):
    content = TEXT.encode()
    _entry(monkeypatch, content, server.url)
    server.body, server.endless = b"x" * 65536, True  # no Content-Length, and no end
    with pytest.raises(ChargenError, match=f"larger than the {len(content):,} bytes it should have; stopped"):
        find_named_corpus("fakecorpus", offline=False)
    assert list((isolated_cache / "corpora").iterdir()) == []
    assert server.sent < 1 << 26


def test_a_download_announcing_the_wrong_size_is_refused_before_reading(server, monkeypatch, isolated_cache):
    content = TEXT.encode()
    _entry(monkeypatch, content, server.url)
    server.body, server.length = b"x" * (len(content) * 2), len(content) * 2
    with pytest.raises(ChargenError, match=f"offers {len(content) * 2:,} bytes for fakecorpus, which should have"):
        find_named_corpus("fakecorpus", offline=False)
    assert list((isolated_cache / "corpora").iterdir()) == []


def test_a_short_or_altered_download_is_refused(server, monkeypatch, isolated_cache):
    content = TEXT.encode()
    _entry(monkeypatch, content, server.url)
    for body in (content[:-1], content.replace(b"fox", b"cat")):
        server.body, server.length = body, None
        with pytest.raises(ChargenError, match="has sha256 .* expected"):
            find_named_corpus("fakecorpus", offline=False)
        assert list((isolated_cache / "corpora").iterdir()) == []
