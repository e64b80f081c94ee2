"""Resolving a SOURCE to text.

A source is one of:

* a text file;
* a folder (every non-hidden file below it that is not binary, recursively) or a
  glob pattern (``data/*.txt``);
* a registry name (``tinyshakespeare``, ``pystdlib``; see ``registry.json``),
  looked up on a local search path and otherwise downloaded once, checksum
  verified;
* ``hf:NAME``: a Hugging Face dataset, either local ``.jsonl``/``.json``/
  ``.csv``/``.parquet`` files (or a folder of them) or a hub name.

Several files or documents are concatenated in sorted order. Between two
documents the first is ended with a newline if it lacks one, then
``DOCUMENT_SEPARATOR`` (one more newline) follows, so a document boundary
always reads as a blank line. A single file comes through byte for byte.

Text is produced as a stream of pieces that each end at a newline (or at the
end of a document), so that normalization never sees half a line and the
whole corpus is never held in memory at once.
"""

from __future__ import annotations

import codecs
import fnmatch
import glob
import hashlib
import json
import os
import sys
import sysconfig
import tempfile
import urllib.request
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .errors import ChargenError

DOCUMENT_SEPARATOR = "\n"  # written after a document's own trailing newline
READ_CHUNK_BYTES = 16 << 20
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_SOURCE = "pystdlib"
ERRORS_CHOICES = ("strict", "replace", "ignore")

# Standard-library folders that hold tests, or other environments' packages.
_STDLIB_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


@lru_cache(maxsize=None)
def registry() -> dict[str, dict]:
    """The corpora chargen knows by name: ``{name: entry}``."""
    with open(Path(__file__).with_name("registry.json"), encoding="utf-8") as f:
        return json.load(f)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where chargen keeps downloads and prepared corpora.

    ``cache_dir`` if given, else ``$CHARGEN_CACHE``, else
    ``$XDG_CACHE_HOME/chargen`` (``~/.cache/chargen``).
    """
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("CHARGEN_CACHE"):
        return Path(os.environ["CHARGEN_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "chargen"


def corpora_search_path(corpora_dirs: Sequence[str | os.PathLike] = (),
                        cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for a named corpus, in order.

    ``--corpora-dir`` flags, then ``$CHARGEN_CORPORA`` (``os.pathsep``
    separated), then the ``corpora/`` folder of a source checkout, then the
    user cache, which is also where downloads go.
    """
    dirs = [Path(d).expanduser() for d in corpora_dirs]
    env = os.environ.get("CHARGEN_CORPORA", "")
    dirs += [Path(d).expanduser() for d in env.split(os.pathsep) if d]
    repo_corpora = Path(__file__).resolve().parent.parent / "corpora"
    if repo_corpora.is_dir():
        dirs.append(repo_corpora)
    dirs.append(cache_root(cache_dir) / "corpora")
    return dirs


@dataclass
class Source:
    """A resolved source: where its text comes from and how to fingerprint it."""

    name: str                      # what the user asked for, for summaries
    kind: str                      # "files", "pystdlib" or "hf"
    files: list[Path] = field(default_factory=list)
    root: Path | None = None       # files are named relative to it in the fingerprint
    val_fraction: float = DEFAULT_VAL_FRACTION
    test_fraction: float = 0.0
    strict_binary: bool = True     # a binary file is an error (False: folders skip them)
    hf_documents: Callable[[str], Iterator[str]] | None = None
    hf_identity: str = ""

    def identity(self) -> list:
        """Everything about the source that changes its text, for the fingerprint."""
        if self.kind == "hf" and not self.files:
            return ["hf", self.hf_identity]
        out = [self.kind]
        for path in self.files:
            rel = path.relative_to(self.root).as_posix() if self.root else path.name
            out.append([rel, file_sha256(path)])
        if self.kind == "hf":
            out.append(self.hf_identity)
        return out

    def pieces(self, encoding: str = "utf-8", errors: str = "strict") -> Iterator[str]:
        """The text as a stream of pieces, documents joined by the separator."""
        if self.kind == "hf":
            docs: Iterator[str] = self.hf_documents(encoding)  # type: ignore[misc]
            yield from _join_documents(((d,) for d in docs))
        else:
            yield from _join_documents(
                read_text_pieces(p, encoding, errors) for p in self.files)


def _join_documents(documents) -> Iterator[str]:
    """Chain documents (each an iterable of pieces) with the separator rule.

    A single document comes through unchanged; between two documents the
    first is ended with a newline if it lacks one, then the separator follows.
    """
    previous = None  # last piece of the last non-empty document so far
    for pieces in documents:
        last = None
        for piece in pieces:
            if not piece:
                continue
            if last is None and previous is not None:
                yield ("" if previous.endswith("\n") else "\n") + DOCUMENT_SEPARATOR
            last = piece
            yield piece
        if last is not None:
            previous = last


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def looks_binary(path: Path) -> bool:
    """True when the first 8 KiB hold a NUL byte, as in every binary format."""
    with open(path, "rb") as f:
        return b"\x00" in f.read(8192)


def read_text_pieces(path: Path, encoding: str = "utf-8", errors: str = "strict",
                     chunk_bytes: int = READ_CHUNK_BYTES) -> Iterator[str]:
    """Decode a file in chunks; each piece but the last ends with a newline.

    Strict decoding errors name the file and the byte offset of the first bad
    byte; a NUL byte marks the file as binary. A single line longer than a
    chunk is cut at a character boundary instead.
    """
    try:
        f = open(path, "rb")
    except OSError as e:
        raise ChargenError(f"cannot read {path}: {e.strerror}; check the path and its permissions") from None
    with f:
        if "\n".encode(encoding) == b"\n":
            yield from _pieces_cut_in_bytes(f, path, encoding, errors, chunk_bytes)
        else:  # UTF-16/32 and the like: a newline is not one byte
            yield from _pieces_cut_in_text(f, path, encoding, errors, chunk_bytes)


def _decode(buf, path, encoding, errors, offset) -> str:
    try:
        return str(buf, encoding, errors)
    except UnicodeDecodeError as e:
        raise ChargenError(
            f"{path} is not valid {encoding}: undecodable byte at offset {offset + e.start}; "
            "pass --encoding ENCODING if it is another encoding, or --errors replace") from None


def _pieces_cut_in_bytes(f, path, encoding, errors, chunk_bytes) -> Iterator[str]:
    # In ASCII-compatible encodings (UTF-8, Latin-1, the CJK codecs) byte 0x0A is
    # always a newline and never part of a longer character, so cutting the
    # bytes after it never splits a character and text is decoded only once.
    utf8 = codecs.lookup(encoding).name == "utf-8"
    carry = b""
    start = 0  # file offset of carry[0]
    while chunk := f.read(chunk_bytes):
        nul = chunk.find(b"\x00")
        if nul >= 0:
            raise ChargenError(f"{path} looks like a binary file (NUL byte at offset "
                               f"{start + len(carry) + nul}); pass a text file")
        buf = carry + chunk if carry else chunk
        cut = buf.rfind(b"\n") + 1
        if cut == 0:
            if not utf8 or len(buf) < chunk_bytes:
                carry = buf
                continue
            cut = len(buf)  # one very long line: cut before the last character's lead byte
            while cut > 1 and (buf[cut - 1] & 0xC0) == 0x80:
                cut -= 1
            cut -= 1
        view = memoryview(buf)
        yield _decode(view[:cut], path, encoding, errors, start)
        carry = bytes(view[cut:])
        start += cut
    if carry:
        yield _decode(carry, path, encoding, errors, start)


def _pieces_cut_in_text(f, path, encoding, errors, chunk_bytes) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder(encoding)(errors)
    consumed = 0  # bytes handed to the decoder so far
    carry = ""    # text after the last newline, held for the next piece
    while True:
        chunk = f.read(chunk_bytes)
        final = not chunk
        buffered = len(decoder.getstate()[0])
        try:
            text = decoder.decode(chunk, final)
        except UnicodeDecodeError as e:
            raise ChargenError(
                f"{path} is not valid {encoding}: undecodable byte at offset {consumed - buffered + e.start}; "
                "pass --encoding ENCODING if it is another encoding, or --errors replace") from None
        consumed += len(chunk)
        if "\x00" in text:
            raise ChargenError(f"{path} looks like a binary file (it decodes to NUL characters); "
                               "pass a text file")
        if final:
            if carry + text:
                yield carry + text
            return
        cut = text.rfind("\n") + 1
        if cut == 0:
            carry += text
            continue
        yield carry + text[:cut]
        carry = text[cut:]


# --------------------------------------------------------------------------- resolving


def resolve_source(source: str | os.PathLike | None = None, *,
                   corpora_dirs: Sequence[str | os.PathLike] = (),
                   cache_dir: str | os.PathLike | None = None,
                   text_column: str = "text",
                   offline: bool | None = None) -> Source:
    """Turn what the user typed into a :class:`Source`, or raise ChargenError."""
    if source is None or str(source) == "":
        source = DEFAULT_SOURCE
    text = str(source)
    if text.startswith("hf:"):
        from .hf import hf_source  # datasets stays unimported unless an hf: source is used
        return hf_source(text[3:], text_column)
    path = Path(text).expanduser()
    if path.is_file():
        return Source(name=text, kind="files", files=[path])
    if path.is_dir():
        return _folder_source(text, path)
    if glob.has_magic(text):
        matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True)
                         if Path(p).is_file())
        if not matches:
            raise ChargenError(f"no files match {text!r}; check the pattern")
        root = Path(os.path.commonpath([str(p.parent) for p in matches]))
        return Source(name=text, kind="files", files=matches, root=root)
    if text in registry():
        return _registry_source(text, corpora_dirs, cache_dir, offline)
    if os.sep in text or "/" in text or path.suffix:
        if path.exists():
            raise ChargenError(f"{text} is neither a file nor a folder; pass a text file or a folder")
        raise ChargenError(f"{text} does not exist; check the path")
    known = ", ".join(sorted(registry()))
    raise ChargenError(f"unknown corpus {text!r}: not a file, folder or glob, and not a known corpus "
                       f"name ({known}); use hf:NAME for a Hugging Face dataset")


def _folder_source(name: str, folder: Path) -> Source:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in filenames:
            p = Path(dirpath) / fn
            if fn.startswith(".") or not p.is_file() or p.stat().st_size == 0:
                continue
            if not looks_binary(p):
                files.append(p)
    files.sort(key=lambda p: p.relative_to(folder).as_posix())
    if not files:
        raise ChargenError(f"folder {name} has no text files; pass a folder that holds some, or a file")
    return Source(name=name, kind="files", files=files, root=folder, strict_binary=False)


def stdlib_files() -> tuple[Path, list[Path]]:
    """The running interpreter's standard-library ``.py`` files, sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP_DIRS and not d.startswith("."))
        files += [Path(dirpath) / f for f in filenames
                  if f.endswith(".py") and not fnmatch.fnmatch(f, "test_*.py")]
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    return root, files


def _registry_source(name: str, corpora_dirs, cache_dir, offline) -> Source:
    entry = registry()[name]
    split = dict(val_fraction=entry.get("val_fraction", DEFAULT_VAL_FRACTION),
                 test_fraction=entry.get("test_fraction", 0.0))
    if entry.get("builtin"):
        root, files = stdlib_files()
        if not files:
            raise ChargenError(f"found no standard-library sources under {root}; "
                               "pass a file or folder as SOURCE instead")
        return Source(name=name, kind="pystdlib", files=files, root=root, **split)
    path = find_named_corpus(name, corpora_dirs=corpora_dirs, cache_dir=cache_dir, offline=offline)
    return Source(name=name, kind="files", files=[path], **split)


def find_named_corpus(name: str, *, corpora_dirs: Sequence[str | os.PathLike] = (),
                      cache_dir: str | os.PathLike | None = None,
                      offline: bool | None = None) -> Path:
    """Path of a registry corpus: found on the search path, or downloaded once.

    A file found locally is checked against the registry's sha256 too, so a
    truncated or edited copy is reported instead of silently trained on.
    """
    entry = registry()[name]
    search = corpora_search_path(corpora_dirs, cache_dir)
    for folder in search:
        candidate = folder / entry["filename"]
        if candidate.is_file():
            digest = file_sha256(candidate)
            if digest != entry["sha256"]:
                raise ChargenError(
                    f"{candidate} has sha256 {digest[:12]}…, but {name} should have "
                    f"{entry['sha256'][:12]}…; delete or replace that file")
            return candidate
    if offline is None:
        offline = os.environ.get("CHARGEN_OFFLINE", "") not in ("", "0")
    target = search[-1] / entry["filename"]
    where = f"put {entry['filename']} in one of: {', '.join(str(d) for d in search)}"
    if offline:
        raise ChargenError(f"{name} is not on the local search path and downloads are off; {where}")
    download(entry["url"], target, entry["sha256"], name=name, hint=where)
    return target


def download(url: str, target: Path, sha256: str, *, name: str, hint: str, timeout: float = 30) -> None:
    """Fetch ``url`` to ``target`` through a temporary file, verifying sha256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    h = hashlib.sha256()
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                while chunk := resp.read(1 << 20):
                    h.update(chunk)
                    out.write(chunk)
        except (OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e)
            raise ChargenError(f"could not download {name} from {url} ({reason}); {hint}") from None
        if h.hexdigest() != sha256:
            raise ChargenError(f"download of {name} from {url} has sha256 {h.hexdigest()[:12]}…, "
                               f"expected {sha256[:12]}…; try again later, or {hint}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"chargen: downloaded {name} to {target}", file=sys.stderr)
