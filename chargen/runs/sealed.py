"""Sealed safetensors files: a run's weights, optimizer state and carried state know their own checksum.

A safetensors file is an 8-byte little-endian header length, a JSON header (tensor names, dtypes,
shapes, offsets into the data, and a ``__metadata__`` map of strings), then the data. A sealed file
carries the SHA-256 of its data in ``__metadata__["sha256"]``, so that a flipped bit is found when the
file is read, not sampled from. The weights also vouch for the files beside them that are read with
them (config.json and tokenizer.json; last/trainer.json for last/): a damaged file that still parses is
found too. Files written before sealing have no such keys and are read as they are.

Pure Python (no torch, no numpy): the NumPy backend reads through it too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from pathlib import Path
from typing import IO

from ..errors import ChargenError
from ..files import HASH_CHUNK, file_sha256, open_to_read

SEAL = "sha256"


def _header(f: IO[bytes], path: object) -> tuple[int, dict]:
    raw = f.read(8)
    if len(raw) != 8:
        raise ChargenError(f"{path} is not a readable safetensors file (too short); the run folder is corrupt")
    n = struct.unpack("<Q", raw)[0]
    try:
        header = json.loads(f.read(n)) if n < (100 << 20) else None
    except (UnicodeDecodeError, ValueError):
        header = None
    if not isinstance(header, dict):
        raise ChargenError(f"{path} is not a readable safetensors file (a bad header); the run folder is corrupt")
    return n, header


def safetensors_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header (empty if it has none)."""
    with open_to_read(path) as f:
        meta = _header(f, path)[1].get("__metadata__") or {}
    return meta if isinstance(meta, dict) else {}


def seal_safetensors(path: Path, extra: dict[str, str] | None = None) -> None:
    """Rewrite the safetensors file at ``path`` (a temporary file, before it is published) with the SHA-256
    of its data, and ``extra`` entries, in its header's metadata."""
    with open(path, "rb") as f:
        n, header = _header(f, path)
    meta = dict(header.get("__metadata__") or {})
    meta.update(extra or {})
    meta[SEAL] = file_sha256(path, 8 + n)
    header["__metadata__"] = meta
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data stays 8-byte aligned, as safetensors writes it
    sealed = path.with_name(path.name + ".sealed")
    try:
        with open(path, "rb") as src, open(sealed, "wb") as dst:
            dst.write(struct.pack("<Q", len(raw)) + raw)
            src.seek(8 + n)
            shutil.copyfileobj(src, dst, HASH_CHUNK)
        os.replace(sealed, path)
    finally:
        if sealed.exists():
            sealed.unlink()


# Files whose data matched their seal, by (path, device, inode, size, mtime): opening a run reads the weights'
# header and then loads them, and each would otherwise hash the whole file again.
_CHECKED: dict[tuple, None] = {}
_CHECKED_MOST = 64


def check_sealed(path: str | os.PathLike[str]) -> dict[str, str]:
    """Check a sealed safetensors file's data against its SHA-256 (once per version of the file); its
    metadata. A file that carries no seal (written by an older chargen) passes unchecked."""
    with open_to_read(path) as f:
        st = os.fstat(f.fileno())
        n, header = _header(f, path)
    meta = header.get("__metadata__") or {}
    want = meta.get(SEAL) if isinstance(meta, dict) else None
    key = (os.fspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, want)
    if want is None or key in _CHECKED:
        return meta if isinstance(meta, dict) else {}
    if file_sha256(path, 8 + n) != want:
        raise ChargenError(
            f"{path} is damaged: its data does not match the checksum it was written with; the run folder is "
            "corrupt (restore it from a copy, or train again)"
        )
    if len(_CHECKED) >= _CHECKED_MOST:
        _CHECKED.clear()
    _CHECKED[key] = None
    return meta


COMPANIONS = {"config_sha256": "config.json", "tokenizer_sha256": "tokenizer.json"}


def json_sha256(path: Path) -> str:
    """The SHA-256 of a JSON file's content, not its bytes: re-indented or re-saved with the same values
    it is the same; any changed value, or a file that no longer parses, is not."""
    try:
        content = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return file_sha256(path)  # the bytes, so that it cannot match
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def companion_checksums(folder: Path, names: dict[str, str] = COMPANIONS) -> dict[str, str]:
    """The checksums of the JSON files a weights file vouches for (those of ``names`` present in
    ``folder``), as metadata entries: a damaged config.json or tokenizer.json is then found, not read as
    another run's."""
    return {key: json_sha256(folder / name) for key, name in names.items() if (folder / name).is_file()}


def check_companions(weights: Path, folder: Path, names: dict[str, str] = COMPANIONS) -> None:
    """Check the files ``weights`` vouches for against the checksums in its metadata (none: unchecked)."""
    if not weights.is_file():
        return  # reported where the weights are read
    meta = safetensors_metadata(weights)
    for key, name in names.items():
        if key in meta and (folder / name).is_file() and json_sha256(folder / name) != meta[key]:
            raise ChargenError(
                f"{folder / name} is damaged or was edited: its values do not match the checksum {weights.name} "
                "recorded when it was written (a run's files are not edited by hand: options change through "
                "flags); restore it from a copy, or train again"
            )
