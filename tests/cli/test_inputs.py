"""Unusual but legitimate inputs (issue 9): --overwrite that keeps the old run until the new one exists,
globs and folders with symbolic links, encodings other than UTF-8, byte-order marks, bounded downloads."""

from __future__ import annotations

import codecs
import hashlib
import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

import chargen
from chargen import ChargenError, prepare
from chargen.data import sources as corpus_mod
from chargen.data.registry import find_named_corpus, registry
from chargen.data.sources import DOCUMENT_SEPARATOR, resolve_source
from chargen.files import read_text_pieces
from chargen.runs import replace
from chargen.runs.folder import LOCK_FILE
from chargen.training import launch as runs_mod

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
        chargen.train(
            tmp_path / "c.txt",
            out=old_run,
            overwrite=True,
            max_steps=3,
            **{**TINY, "hidden_size": 10**6, "num_layers": 50},
        )
    assert files_of(old_run) == before
    assert os.listdir(old_run.parent) == ["r"]  # nothing built beside it is left


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_overwrite_that_fails_before_the_first_checkpoint_leaves_the_old_run_whole(
    old_run, tmp_path, monkeypatch, error
):
    from chargen.training.trainer import Trainer

    before = files_of(old_run)

    def fail(self):
        raise error

    monkeypatch.setattr(Trainer, "_step", fail)
    with pytest.raises(type(error)):
        chargen.train(tmp_path / "c.txt", out=old_run, overwrite=True, max_steps=5, **TINY)
    assert files_of(old_run) == before
    assert os.listdir(old_run.parent) == ["r"]


def test_overwrite_replaces_the_run_whole_once_it_exists(old_run, tmp_path):
    old_weights = (old_run / "model.safetensors").read_bytes()
    (old_run / "notes.txt").write_text("the old run's own file goes with it\n")
    os.chmod(old_run, 0o2750)
    identity = os.stat(old_run).st_ino
    result = chargen.train(tmp_path / "c.txt", out=old_run, overwrite=True, max_steps=4, **{**TINY, "hidden_size": 12})
    assert Path(result.run_dir) == old_run
    assert os.listdir(old_run.parent) == ["r"]
    assert sorted(os.listdir(old_run)) == [
        "config.json",
        "last",
        "metrics.jsonl",
        "model.safetensors",
        "tokenizer.json",
    ]  # nothing hidden left, and the lock is gone
    assert os.stat(old_run).st_ino == identity and os.stat(old_run).st_mode & 0o7777 == 0o2750  # the same folder
    assert json.loads((old_run / "config.json").read_text())["model"]["hidden_size"] == 12
    assert (old_run / "model.safetensors").read_bytes() != old_weights
    rows = [json.loads(line) for line in (old_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r][-1] == 4 and rows[-1]["event"] == "stopped"
    assert chargen.Sampler.load(old_run).generate("the", length=10, seed=1)
    chargen.train(tmp_path / "c.txt", out=old_run, resume=True, max_steps=6)  # and it is a run to resume


def test_overwrite_of_the_working_folder(old_run, tmp_path, monkeypatch):
    monkeypatch.chdir(old_run)
    chargen.train(tmp_path / "c.txt", out=".", overwrite=True, max_steps=3, **{**TINY, "hidden_size": 12})
    assert json.loads((old_run / "config.json").read_text())["model"]["hidden_size"] == 12
    monkeypatch.chdir(old_run / "last")
    chargen.train(tmp_path / "c.txt", out="..", overwrite=True, max_steps=3, **{**TINY, "hidden_size": 10})
    assert json.loads((old_run / "config.json").read_text())["model"]["hidden_size"] == 10


def test_overwrite_through_a_symbolic_link_replaces_the_folder_it_names(old_run, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(old_run)
    chargen.train(tmp_path / "c.txt", out=link, overwrite=True, max_steps=3, **{**TINY, "hidden_size": 12})
    assert link.is_symlink() and link.resolve() == old_run.resolve()
    assert json.loads((old_run / "config.json").read_text())["model"]["hidden_size"] == 12
    assert os.listdir(old_run.parent) == ["r"]


def test_a_move_cut_short_at_any_rename_is_completed_or_undone(old_run, tmp_path, monkeypatch):
    """Kill the move after each of its renames in turn: the next claim leaves the old run or the new one
    whole, never a mix (before the mark the old one comes back; after it the new one goes in)."""
    chargen.train(tmp_path / "c.txt", out=tmp_path / "n", max_steps=3, **{**TINY, "hidden_size": 12})
    old_files, new_files = files_of(old_run), files_of(tmp_path / "n")
    real_rename, outcomes, cut = os.rename, [], 0
    while not outcomes or outcomes[-1] != "finished":
        target = tmp_path / f"round{cut}"
        shutil.copytree(old_run, target)
        staged = replace.stage(target)
        for p in (tmp_path / "n").iterdir():
            shutil.copytree(p, staged / p.name) if p.is_dir() else shutil.copy2(p, staged / p.name)
        left = [cut]

        def rename(a, b, left=left):
            if left[0] == 0:
                raise KeyboardInterrupt  # the kill, just before this rename
            left[0] -= 1
            real_rename(a, b)

        monkeypatch.setattr(replace.os, "rename", rename)
        try:
            replace.move_in(staged, target, LOCK_FILE)
            outcomes.append("finished")
        except KeyboardInterrupt:
            outcomes.append(None)
        monkeypatch.setattr(replace.os, "rename", real_rename)
        runs_mod.RunClaim(target, overwrite=True).abandon()  # the next claim recovers, stages, gives up
        now = files_of(target)
        assert now in (old_files, new_files), cut
        outcomes[-1] = outcomes[-1] or ("old" if now == old_files else "new")
        cut += 1
    assert outcomes[-1] == "finished" and files_of(tmp_path / f"round{cut - 1}") == new_files
    assert "old" in outcomes and "new" in outcomes and len(outcomes) >= 10, outcomes  # both ways, every rename


def test_abandoned_stages_are_removed_but_nothing_else(old_run):
    before = files_of(old_run)
    (old_run / ".chargen-new-abcd1234").mkdir()
    (old_run / ".chargen-new-abcd1234" / "config.json").write_text("{}")
    (old_run / ".chargen-old-zz99aa00").mkdir()
    (old_run.parent / ".r.new-mydata").mkdir()  # a user's folder beside the run: never touched
    replace.recover(old_run, LOCK_FILE)
    assert files_of(old_run) == before and not any(p.name.startswith(".") for p in old_run.iterdir())
    assert (old_run.parent / ".r.new-mydata").is_dir()


def test_the_overwritten_run_stays_locked_throughout(old_run, tmp_path, monkeypatch):
    """While the new run is built inside it, the old folder is held, and after the move too."""
    from chargen.training.trainer import Trainer

    seen = []
    real = Trainer._step

    def step_and_try(self):
        real(self)
        with pytest.raises(ChargenError, match="is in use"):
            runs_mod.RunLock(old_run)
        seen.append(self.run.dir == old_run)

    monkeypatch.setattr(Trainer, "_step", step_and_try)
    chargen.train(tmp_path / "c.txt", out=old_run, overwrite=True, max_steps=4, checkpoint_every=2, **TINY)
    assert seen == [False, False, True, True]  # built inside the old run until the checkpoint at step 2
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


def test_a_folder_named_like_a_pattern_is_read_literally(tmp_path):
    for folder, text in (("data[1]", "literal\n"), ("data1", "sibling\n"), ("star*dir", "star\n"), ("starXdir", "x\n")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.txt").write_text(text)
    assert text_of(resolve_source(tmp_path / "data[1]")) == "literal\n"
    assert text_of(resolve_source(tmp_path / "star*dir")) == "star\n"


def test_any_depth_is_fine(tmp_path):
    deep = d = tmp_path / "deep"
    deep.mkdir()
    for _ in range(1200):  # one level at a time: pathlib's own mkdir(parents=True) recurses
        d = d / "d"
        d.mkdir()
    (d / "x.txt").write_text("deep down\n")
    try:
        assert text_of(resolve_source(deep)) == "deep down\n"
        assert text_of(resolve_source(str(deep / "**" / "*.txt"))) == "deep down\n"
    finally:  # shutil.rmtree (pytest's clean-up) recurses too: take it down one level at a time
        (d / "x.txt").unlink()
        while d != tmp_path:
            d.rmdir()
            d = d.parent


def test_a_folder_that_may_not_be_searched_is_one_error(tmp_path, monkeypatch):
    (tmp_path / "f" / "sub").mkdir(parents=True)
    (tmp_path / "f" / "a.txt").write_text("a\n")
    (tmp_path / "f" / "sub" / "b.txt").write_text("b\n")
    real_stat = os.stat

    def stat(path, *args, **kwargs):  # what a folder without its x bit does to a process without root's powers
        if "sub" in Path(path).parts and Path(path).name != "sub":
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(corpus_mod.os, "stat", stat)
    for source in (tmp_path / "f", str(tmp_path / "f" / "**" / "*.txt"), tmp_path / "f" / "sub" / "b.txt"):
        with pytest.raises(ChargenError, match="b.txt: Permission denied; fix its permissions"):
            resolve_source(source)


# --------------------------------------------------------------------------- encodings and byte-order marks


def test_a_folder_of_utf16_files_is_read_with_its_encoding(tmp_path):
    (tmp_path / "a.txt").write_text("first ünï\n", encoding="utf-16")
    (tmp_path / "b.txt").write_text("second 😀\n", encoding="utf-16")
    src = resolve_source(tmp_path, encoding="utf-16")
    assert [p.name for p in src.files] == ["a.txt", "b.txt"]
    assert text_of(src, encoding="utf-16") == "first ünï\n" + DOCUMENT_SEPARATOR + "second 😀\n"
    corpus = prepare(tmp_path, encoding="utf-16", val_fraction=0.0)
    assert corpus.meta["chars"] == len("first ünï\n\nsecond 😀\n")


def test_under_utf8_a_utf16_or_utf32_byte_order_mark_decides_the_encoding(tmp_path):
    (tmp_path / "a.txt").write_text("plain ünï\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("wide 😀\n", encoding="utf-16")
    (tmp_path / "c.txt").write_text("wider ß\n", encoding="utf-32")
    src = resolve_source(tmp_path)
    assert [p.name for p in src.files] == ["a.txt", "b.txt", "c.txt"]
    assert text_of(src) == "plain ünï\n" + DOCUMENT_SEPARATOR + "wide 😀\n" + DOCUMENT_SEPARATOR + "wider ß\n"
    assert text_of(resolve_source(tmp_path / "b.txt")) == "wide 😀\n"
    # an encoding the user names is taken as it is: in latin-1 this file is binary (NUL bytes)
    with pytest.raises(ChargenError, match="looks like a binary file"):
        text_of(resolve_source(tmp_path / "b.txt"), encoding="latin-1")


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"])
def test_a_leading_byte_order_mark_is_not_text_in_any_unicode_encoding(tmp_path, encoding):
    (tmp_path / "a.txt").write_bytes(("\ufeff" + "body \ufeff kept\n").encode(encoding))
    assert text_of(resolve_source(tmp_path / "a.txt"), encoding=encoding) == "body \ufeff kept\n"


def test_a_binary_file_in_a_utf16_folder_is_skipped_not_fatal(tmp_path):
    import gzip

    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-16")
    (tmp_path / "b.gz").write_bytes(gzip.compress(TEXT.encode() * 20))
    (tmp_path / "c.txt").write_bytes(TEXT.encode("utf-8"))  # no mark: not utf-16 text
    assert [p.name for p in resolve_source(tmp_path, encoding="utf-16").files] == ["a.txt"]


def test_binary_files_are_still_skipped_in_a_utf16_folder(tmp_path):
    (tmp_path / "a.txt").write_text("text\n", encoding="utf-16")
    (tmp_path / "b.bin").write_bytes(codecs.BOM_UTF16_LE + b"\x00\x00" * 4)  # decodes to NUL characters
    assert [p.name for p in resolve_source(tmp_path, encoding="utf-16").files] == ["a.txt"]


def test_a_leading_utf8_bom_is_not_text(tmp_path):
    (tmp_path / "a.txt").write_bytes(codecs.BOM_UTF8 + b"first\n")
    (tmp_path / "b.txt").write_bytes(codecs.BOM_UTF8 + "sec\ufeffond\n".encode())  # only the leading one goes
    assert text_of(resolve_source(tmp_path)) == "first\n" + DOCUMENT_SEPARATOR + "sec\ufeffond\n"
    corpus = prepare(tmp_path / "a.txt", val_fraction=0.0)
    assert "\ufeff" not in corpus.vocab.chars and corpus.meta["chars"] == len("first\n")


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 5, 64])
def test_a_leading_bom_goes_at_any_chunk_size_and_offsets_stay_true(tmp_path, chunk):
    p = tmp_path / "a.txt"
    p.write_bytes(codecs.BOM_UTF8 + b"ab\ncd\n")
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
    entry = {
        "description": "test",
        "filename": "fake.txt",
        "url": url,
        "sha256": hashlib.sha256(content).hexdigest(),
        "size": len(content),
        "license": "test",
        "val_fraction": 0.1,
        "test_fraction": 0.0,
    }
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
    with pytest.raises(ChargenError, match=f"larger than the {len(content):,} bytes it should have; stopped") as e:
        find_named_corpus("fakecorpus", offline=False)
    assert "could not download" not in str(e.value) and str(e.value).count("put fake.txt") == 1
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


def test_a_run_made_from_a_relative_source_resumes_from_anywhere(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "c.txt").write_text(TEXT)
    monkeypatch.chdir(tmp_path)
    chargen.train("data/c.txt", out=tmp_path / "run", max_steps=3, **TINY)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert chargen.train(out=tmp_path / "run", resume=True, max_steps=5).steps == 5


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nxx",
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 9999\r\n\r\nshort",
    ],
)
def test_a_broken_http_response_is_one_error(monkeypatch, isolated_cache, reply):
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve():
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(reply)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    _entry(monkeypatch, TEXT.encode(), f"http://127.0.0.1:{listener.getsockname()[1]}/fake.txt")
    try:
        with pytest.raises(ChargenError, match="fakecorpus") as e:
            find_named_corpus("fakecorpus", offline=False)
    finally:
        listener.close()
    assert "\n" not in str(e.value)
    assert list((isolated_cache / "corpora").iterdir()) == []
