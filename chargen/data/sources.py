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

import errno
import fnmatch
import glob
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ChargenError
from ..files import file_sha256, looks_binary, read_text_pieces
from .registry import find_named_corpus, registry, stdlib_files

DOCUMENT_SEPARATOR = "\n"  # written after a document's own trailing newline
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_SOURCE = "pystdlib"

# (encoding, errors) -> the documents, each an iterable of text pieces
Documents = Callable[[str, str], Iterable[Iterable[str]]]


@dataclass
class Source:
    """A resolved source: where its text comes from, and what identifies it for the fingerprint."""

    name: str  # what the user asked for, for summaries
    kind: str  # "files", "pystdlib" or "hf"
    documents: Documents
    identity: Callable[[], list]  # everything about the source that changes its text
    files: list[Path] = field(default_factory=list)
    val_fraction: float = DEFAULT_VAL_FRACTION
    test_fraction: float = 0.0

    def pieces(self, encoding: str = "utf-8", errors: str = "strict") -> Iterator[str]:
        """The text as a stream of pieces, documents joined by the separator."""
        return _join_documents(self.documents(encoding, errors))


def files_source(
    name: str, kind: str, files: list[Path], root: Path | None = None, file_name: str | None = None, **split: float
) -> Source:
    """A source read from files; they are named relative to ``root`` in the fingerprint (a single file by
    its name, or ``file_name``)."""

    def identity() -> list:
        return [
            kind,
            *([p.relative_to(root).as_posix() if root else file_name or p.name, file_sha256(p)] for p in files),
        ]

    def documents(encoding: str, errors: str) -> Iterator[Iterator[str]]:
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


def resolve_source(
    source: str | os.PathLike | None = None,
    *,
    corpora_dirs: Sequence[str | os.PathLike] = (),
    cache_dir: str | os.PathLike | None = None,
    text_column: str = "text",
    encoding: str = "utf-8",
    offline: bool | None = None,
    file_name: str | None = None,
) -> Source:
    """Turn what the user typed into a :class:`Source`, or raise ChargenError.

    ``encoding`` decides which files of a folder or glob are text (see
    :func:`chargen.files.looks_binary`).
    """
    if source is None or str(source) == "":
        source = DEFAULT_SOURCE
    text = str(source)
    if text.startswith("hf:"):
        return _hf_source(text[3:], text_column)
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # ~name of no user here
        raise ChargenError(
            f"{text} names the home folder of a user this machine does not have; check the path"
        ) from None
    kind = _kind(path)
    if kind == "file":
        return files_source(text, "files", [path], file_name=file_name)
    if kind == "dir":
        return _folder_source(text, path, encoding)
    if glob.has_magic(text):
        matches = _regular_files(sorted(_glob(path)))
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
    raise ChargenError(
        f"unknown corpus {text!r}: not a file, folder or glob, and not a known corpus "
        f"name ({known}); use hf:NAME for a Hugging Face dataset"
    )


def _hf_source(name: str, text_column: str) -> Source:
    from .hf import hf_dataset  # datasets stays unimported unless an hf: source is used

    ds = hf_dataset(name, text_column)
    return Source(ds.name, "hf", lambda _encoding, _errors: ((doc,) for doc in ds.documents()), ds.identity, ds.files)


def _folder_source(name: str, folder: Path, encoding: str) -> Source:
    files, binary = [], 0
    found = sorted(_match(folder, ("**", "*")), key=lambda p: p.relative_to(folder).as_posix())
    for p in _regular_files(found):
        if _size(p) > 0:
            if looks_binary(p, encoding):
                binary += 1
            else:
                files.append(p)
    if not files:
        hint = f" ({binary} look binary in {encoding})" if binary else ""
        raise ChargenError(f"folder {name} has no text files{hint}; pass a folder that holds some, or a file")
    return files_source(name, "files", files, folder)


# --------------------------------------------------------------------------- globbing, safely
#
# Symbolic links are followed, to files and to folders, but every file is read
# once (two links to one file, or one reached through two folders), and a
# folder is never walked twice in the same way, so a link that loops
# (``d/loop -> .``) ends the walk instead of repeating it. Hidden names (a
# leading dot) are matched only by a pattern part that starts with a dot, as
# in the shell; ``**`` never descends into hidden folders.


def _glob(pattern: Path) -> list[Path]:
    """Paths matching ``pattern`` (``*``, ``?``, ``[...]`` within one name, ``**`` across folders)."""
    parts = pattern.parts
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part) or part == "**")
    rest = parts[first:] + (("*",) if parts[-1] == "**" else ())  # a trailing ** matches the files below too
    return _match(Path(*parts[:first]) if first else Path("."), rest)


def _match(base: Path, rest: tuple[str, ...]) -> list[Path]:
    """Paths below the folder ``base`` (taken literally) that match the pattern parts ``rest``.

    Walked depth first with a stack, not recursion, so any depth is fine; a
    real folder is expanded by ``**`` once per pattern position, so links that
    loop end the walk.
    """
    found, seen, stack = [], set(), [(base, 0)]
    while stack:
        path, i = stack.pop()
        if i == len(rest):
            found.append(path)
            continue
        part, nxt = rest[i], []
        if part == "**":
            key = (_identity(path), i)
            if key[0] is None or key in seen:
                continue
            seen.add(key)
            nxt = [(path, i + 1)] + [
                (path / name, i) for name in _names(path) if not name.startswith(".") and _kind(path / name) == "dir"
            ]
        elif glob.has_magic(part):
            nxt = [
                (path / name, i + 1)
                for name in _names(path)
                if fnmatch.fnmatch(name, part) and (part.startswith(".") or not name.startswith("."))
            ]
        elif i + 1 == len(rest) or _kind(path / part) == "dir":
            nxt = [(path / part, i + 1)]
        stack.extend(reversed(nxt))
    return found


def _stat(path: Path) -> os.stat_result | None:
    """``os.stat`` (links followed), or None for a path that is missing, or a link that loops or
    dangles; a path that may not be looked at is a ChargenError."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None
        raise ChargenError(
            f"cannot read {path}: {e.strerror}; fix its permissions or leave it out of the source"
        ) from None


def _kind(path: Path) -> str | None:
    """ "file" (regular), "dir", or None (missing, another kind, a link that loops or dangles)."""
    st = _stat(path)
    if st is None:
        return None
    return "file" if stat.S_ISREG(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode) else None


def _names(folder: Path) -> list[str]:
    """The names in a folder (none when it is not a readable folder), sorted."""
    try:
        return sorted(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        raise ChargenError(
            f"cannot read the folder {folder}: {e.strerror}; fix its permissions or leave it out of the source"
        ) from None


def _identity(path: Path) -> tuple[int, int] | None:
    st = _stat(path)
    return None if st is None else (st.st_dev, st.st_ino)


def _regular_files(paths: Iterable[Path]) -> list[Path]:
    """The regular files among ``paths`` (links followed), each real file once, the first path kept."""
    out, seen = [], set()
    for p in paths:
        st = _stat(p)
        if st is None or not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        out.append(p)
    return out


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as e:
        raise ChargenError(
            f"cannot read {path}: {e.strerror}; fix its permissions or leave it out of the source"
        ) from None


def _registry_source(
    name: str, corpora_dirs: Sequence[str | os.PathLike], cache_dir: str | os.PathLike | None, offline: bool | None
) -> Source:
    entry = registry()[name]
    split = dict(
        val_fraction=entry.get("val_fraction", DEFAULT_VAL_FRACTION), test_fraction=entry.get("test_fraction", 0.0)
    )
    if entry.get("builtin"):
        root, files = stdlib_files()
        if not files:
            raise ChargenError(
                f"found no standard-library sources under {root}; pass a file or folder as SOURCE instead"
            )
        return files_source(name, "pystdlib", files, root, **split)
    path = find_named_corpus(name, corpora_dirs=corpora_dirs, cache_dir=cache_dir, offline=offline)
    return files_source(name, "files", [path], **split)
