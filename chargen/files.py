"""File helpers every stage shares: atomic writes, hashing, and decoding text in pieces.

This is a leaf module: it imports nothing from chargen but the error type, so
any stage may use it.

Atomic writes: a file is written under a temporary name in its own folder and
renamed over the target (``os.replace`` is atomic on POSIX and Windows), so a
reader sees the old file or the new one, never half of either.

Decoding: :func:`read_text_pieces` yields a file's text as pieces that end at
newlines, so normalization never sees half a line and a corpus is never held
in memory whole; a strict decoding error names the byte offset.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import shutil
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import ChargenError, StorageError

READ_CHUNK_BYTES = 16 << 20


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp make private (0600/0700) entries; what we publish gets the usual permissions.
FILE_MODE = 0o666 & ~_umask()
DIR_MODE = 0o777 & ~_umask()


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    On an exception the temporary file is removed and ``path`` is untouched; an OSError (a full disk, a
    file-size limit, a read-only folder) becomes a :class:`StorageError` naming ``path``.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise StorageError(path, e.strerror or str(e)) from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        _fsync(tmp)  # the bytes reach the disk before the name points at them
        os.replace(tmp, path)
        fsync_dir(path.parent)  # and the rename itself survives a power cut
    except OSError as e:
        raise StorageError(path, e.strerror or str(e)) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# Durability costs a few milliseconds per file (scripts/bench_checkpoint.py measures it); tests may
# turn it off for speed, never the library.
DURABLE = True


def _fsync(path: str | os.PathLike[str]) -> None:
    if not DURABLE:
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (renames, new files) to disk; a no-op where folders cannot be opened."""
    if not DURABLE:
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows: folders cannot be opened this way, and renames are journalled anyway
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON, atomically."""
    with atomic_write(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_pieces(path: str | os.PathLike, pieces: Iterable[str]) -> None:
    """Write UTF-8 text given in pieces: a regular file atomically (a link followed to its target), a
    pipe or device (a FIFO, /dev/stdout) directly, as it is not a file to replace."""
    path = Path(path)
    if path.exists() and not path.is_file():
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(pieces)
        return
    with atomic_write(path.resolve()) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(pieces)


@contextmanager
def temporary_dir(parent: str | os.PathLike, prefix: str) -> Iterator[Path]:
    """A new folder inside ``parent`` (same filesystem, so it can be renamed into place).

    Whatever is still there when the block ends (an error, or a folder that was
    not renamed away) is removed.
    """
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, DIR_MODE)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def open_to_read(path: str | os.PathLike) -> IO[bytes]:
    """``open(path, "rb")``, or a one-line ChargenError naming the file and what to do."""
    try:
        return open(path, "rb")
    except OSError as e:
        raise ChargenError(
            f"cannot read {path}: {e.strerror}; check its permissions, or leave it out of the source"
        ) from None


_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
    (codecs.BOM_UTF8, "utf-8"),
)


def encoding_from_bom(path: str | os.PathLike) -> str | None:
    """The encoding a file's byte-order mark announces (``utf-8``, ``utf-16``, ``utf-32``), or None."""
    with open_to_read(path) as f:
        head = f.read(4)
    return next((name for bom, name in _BOMS if head.startswith(bom)), None)


def ascii_compatible(encoding: str) -> bool:
    """Whether a newline is the single byte 0x0A in ``encoding`` (UTF-8, Latin-1, ...; not UTF-16/32)."""
    return "\n".encode(encoding) == b"\n"


def file_encoding(path: str | os.PathLike, encoding: str) -> str:
    """The encoding to read a file in: ``encoding``, except that under UTF-8 (the default) a file that
    starts with a UTF-16 or UTF-32 byte-order mark is read in what the mark says."""
    if codecs.lookup(encoding).name != "utf-8":
        return encoding
    announced = encoding_from_bom(path)
    return announced if announced in ("utf-16", "utf-32") else encoding


def looks_binary(path: str | os.PathLike, encoding: str = "utf-8") -> bool:
    """True when the first 8 KiB are not text in the file's encoding (see :func:`file_encoding`).

    In ASCII-compatible encodings a NUL byte marks a binary file, as in every
    binary format; in UTF-16 or UTF-32, where text is full of zero bytes, a
    NUL character, or bytes that do not decode (a missing byte-order mark).
    """
    encoding = file_encoding(path, encoding)
    with open_to_read(path) as f:
        head = f.read(8192)
    if ascii_compatible(encoding):
        return b"\x00" in head
    try:
        return "\x00" in codecs.getincrementaldecoder(encoding)("strict").decode(head)
    except UnicodeError:
        return True


# --------------------------------------------------------------------------- decoding in pieces


def read_text_pieces(
    path: Path, encoding: str = "utf-8", errors: str = "strict", chunk_bytes: int = READ_CHUNK_BYTES
) -> Iterator[str]:
    """Decode a file in chunks; each piece but the last ends with a newline.

    Strict decoding errors name the file and the byte offset of the first bad
    byte; a NUL byte marks the file as binary. A single line longer than a
    chunk is cut at a character boundary instead. A byte-order mark at the
    start of the file is not text and is dropped (as ``utf-8-sig`` does);
    under UTF-8 a UTF-16 or UTF-32 one decides the encoding (:func:`file_encoding`).
    """
    encoding = file_encoding(path, encoding)
    with open_to_read(path) as f:
        if ascii_compatible(encoding):
            yield from _pieces_cut_in_bytes(f, path, encoding, errors, chunk_bytes)
        else:  # UTF-16/32 and the like: a newline is not one byte
            yield from _pieces_cut_in_text(f, path, encoding, errors, chunk_bytes)


def _not_valid(path: str | os.PathLike, encoding: str, offset: int) -> ChargenError:
    return ChargenError(
        f"{path} is not valid {encoding}: undecodable byte at offset {offset}; "
        "pass --encoding ENCODING if it is another encoding, or --errors replace"
    )


def _decode(buf: bytes | memoryview, path: str | os.PathLike, encoding: str, errors: str, offset: int) -> str:
    try:
        return str(buf, encoding, errors)
    except UnicodeDecodeError as e:
        raise _not_valid(path, encoding, offset + e.start) from None


def _pieces_cut_in_bytes(
    f: IO[bytes], path: str | os.PathLike, encoding: str, errors: str, chunk_bytes: int
) -> Iterator[str]:
    # In ASCII-compatible encodings (UTF-8, Latin-1, the CJK codecs) byte 0x0A is
    # always a newline and never part of a longer character, so cutting the
    # bytes after it never splits a character and text is decoded only once.
    utf8 = codecs.lookup(encoding).name == "utf-8"
    carry = b""
    start = 0  # file offset of carry[0]
    if utf8 and f.read(3) == codecs.BOM_UTF8:
        start = 3  # the byte-order mark is not text
    else:
        f.seek(0)
    while chunk := f.read(chunk_bytes):
        nul = chunk.find(b"\x00")
        if nul >= 0:
            raise ChargenError(
                f"{path} looks like a binary file (NUL byte at offset {start + len(carry) + nul}); pass a text file"
            )
        buf = carry + chunk if carry else chunk
        cut = buf.rfind(b"\n") + 1
        if cut == 0:
            if not utf8 or len(buf) < chunk_bytes:
                carry = buf
                continue
            cut = _safe_cut(buf)
            if cut <= 0:
                carry = buf
                continue
        view = memoryview(buf)
        yield _decode(view[:cut], path, encoding, errors, start)
        carry = bytes(view[cut:])
        start += cut
    if carry:
        yield _decode(carry, path, encoding, errors, start)


def _safe_cut(buf: bytes, window: int = 1 << 16) -> int:
    """Where to cut one very long UTF-8 line so that no normalization joins across the cut.

    NFC and NFKC join a character with the marks (or Hangul jamo) that follow
    it, so a piece must not end between them. Candidates are tried from the end
    back (ASCII bytes first, which never join anything before them; then any
    character boundary), and a cut is taken only where normalizing the text on
    each side apart gives what normalizing it whole gives. Failing that within
    ``window`` bytes, -1: the caller reads on and tries again with more text.
    """
    lo = max(1, len(buf) - window)
    ascii_at = max(buf.rfind(bytes([c]), lo) for c in range(0x80))
    candidates = ([ascii_at] if ascii_at >= lo else []) + [
        p for p in range(len(buf) - 1, lo - 1, -1) if (buf[p] & 0xC0) != 0x80
    ]
    for p in candidates[:4096]:
        if _joins_nothing(buf, p):
            return p
    return -1  # no safe cut near the end: read on (memory grows only for such pathological lines)


def _joins_nothing(buf: bytes, p: int, context: int = 256) -> bool:
    left = buf[max(0, p - context) : p].decode("utf-8", "ignore")
    right = buf[p : p + context].decode("utf-8", "ignore")
    if not right or right[0].encode("utf-8") != buf[p : p + len(right[0].encode("utf-8"))]:
        return False  # the character at the cut is not all here yet
    if unicodedata.combining(right[0]):
        return False  # marks are reordered as a run, which may go on past what is read so far
    return all(
        unicodedata.normalize(form, left + right)
        == unicodedata.normalize(form, left) + unicodedata.normalize(form, right)
        for form in ("NFC", "NFKC")
    )


def _pieces_cut_in_text(
    f: IO[bytes], path: str | os.PathLike, encoding: str, errors: str, chunk_bytes: int
) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder(encoding)(errors)
    consumed = 0  # bytes handed to the decoder so far
    carry = ""  # text after the last newline, held for the next piece
    first = True  # a leading byte-order mark (utf-16-le and the like keep it as U+FEFF) is not text
    while True:
        chunk = f.read(chunk_bytes)
        final = not chunk
        buffered = len(decoder.getstate()[0])
        try:
            text = decoder.decode(chunk, final)
        except UnicodeDecodeError as e:
            raise _not_valid(path, encoding, consumed - buffered + e.start) from None
        except UnicodeError as e:  # UTF-16/32 without a byte-order mark
            raise ChargenError(
                f"{path} cannot be read as {encoding} ({e}); name the byte order, as in "
                f"--encoding {encoding}-le or {encoding}-be"
            ) from None
        consumed += len(chunk)
        if first and text:
            text, first = text.removeprefix("\ufeff"), False
        if "\x00" in text:
            raise ChargenError(f"{path} looks like a binary file (it decodes to NUL characters); pass a text file")
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


HASH_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike[str], start: int = 0) -> str:
    """The SHA-256 of a file's bytes from ``start`` on, read in pieces."""
    h = hashlib.sha256()
    with open_to_read(path) as f:
        f.seek(start)
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()
