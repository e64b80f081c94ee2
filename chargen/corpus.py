"""Resolving a SOURCE to text.

A source is one of:

* a text file;
* a folder (every non-hidden file below it that is not binary, recursively) or a
  glob pattern (``data/*.txt``);
* a registry name (``tinyshakespeare``, ``pystdlib``; see ``registry.py``);
* ``hf:NAME``: a Hugging Face dataset (see ``hf.py``).

Several files or documents are concatenated in sorted order. Between two
documents the first is ended with a newline if it lacks one, then
``DOCUMENT_SEPARATOR`` (one more newline) follows, so a document boundary
always reads as a blank line. A single file comes through byte for byte.

Text is produced as a stream of pieces that each end at a newline (or at the
end of a document), so that normalization never sees half a line and the
whole corpus is never held in memory at once.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from .errors import ChargenError
from .files import file_sha256, looks_binary, read_text_pieces
from .registry import find_named_corpus, registry, stdlib_files

DOCUMENT_SEPARATOR = "\n"  # written after a document's own trailing newline
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_SOURCE = "pystdlib"

# (encoding, errors) -> the documents, each an iterable of text pieces
Documents = Callable[[str, str], Iterable[Iterable[str]]]


@dataclass
class Source:
    """A resolved source: where its text comes from, and what identifies it for the fingerprint."""

    name: str                      # what the user asked for, for summaries
    kind: str                      # "files", "pystdlib" or "hf"
    documents: Documents
    identity: Callable[[], list]   # everything about the source that changes its text
    files: list[Path] = field(default_factory=list)
    val_fraction: float = DEFAULT_VAL_FRACTION
    test_fraction: float = 0.0

    def pieces(self, encoding: str = "utf-8", errors: str = "strict") -> Iterator[str]:
        """The text as a stream of pieces, documents joined by the separator."""
        return _join_documents(self.documents(encoding, errors))


def files_source(name: str, kind: str, files: list[Path], root: Path | None = None, **split) -> Source:
    """A source read from files; they are named relative to ``root`` in the fingerprint."""
    def identity() -> list:
        return [kind, *([p.relative_to(root).as_posix() if root else p.name, file_sha256(p)] for p in files)]

    def documents(encoding: str, errors: str):
        return (read_text_pieces(p, encoding, errors) for p in files)

    return Source(name, kind, documents, identity, files, **split)


def _join_documents(documents: Iterable[Iterable[str]]) -> Iterator[str]:
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
        return _hf_source(text[3:], text_column)
    path = Path(text).expanduser()
    if path.is_file():
        return files_source(text, "files", [path])
    if path.is_dir():
        return _folder_source(text, path)
    if glob.has_magic(text):
        matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True)
                         if Path(p).is_file())
        if not matches:
            raise ChargenError(f"no files match {text!r}; check the pattern")
        root = Path(os.path.commonpath([str(p.parent) for p in matches]))
        return files_source(text, "files", matches, root)
    if text in registry():
        return _registry_source(text, corpora_dirs, cache_dir, offline)
    if os.sep in text or "/" in text or path.suffix:
        if path.exists():
            raise ChargenError(f"{text} is neither a file nor a folder; pass a text file or a folder")
        raise ChargenError(f"{text} does not exist; check the path")
    known = ", ".join(sorted(registry()))
    raise ChargenError(f"unknown corpus {text!r}: not a file, folder or glob, and not a known corpus "
                       f"name ({known}); use hf:NAME for a Hugging Face dataset")


def _hf_source(name: str, text_column: str) -> Source:
    from .hf import hf_dataset  # datasets stays unimported unless an hf: source is used
    ds = hf_dataset(name, text_column)
    return Source(ds.name, "hf", lambda _encoding, _errors: ((doc,) for doc in ds.documents()),
                  ds.identity, ds.files)


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
    return files_source(name, "files", files, folder)


def _registry_source(name: str, corpora_dirs, cache_dir, offline) -> Source:
    entry = registry()[name]
    split = dict(val_fraction=entry.get("val_fraction", DEFAULT_VAL_FRACTION),
                 test_fraction=entry.get("test_fraction", 0.0))
    if entry.get("builtin"):
        root, files = stdlib_files()
        if not files:
            raise ChargenError(f"found no standard-library sources under {root}; "
                               "pass a file or folder as SOURCE instead")
        return files_source(name, "pystdlib", files, root, **split)
    path = find_named_corpus(name, corpora_dirs=corpora_dirs, cache_dir=cache_dir, offline=offline)
    return files_source(name, "files", [path], **split)
