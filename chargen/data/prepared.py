"""Prepared corpora: character ids on disk, cached by a content fingerprint.

``prepare(source, ...)`` turns a source into three id arrays (train, val, test:
contiguous, in that order) plus the vocabulary, in a cache folder named by a
fingerprint of the source bytes and of every option that changes the ids. A
second call with the same input and options reuses the folder.

The text streams through two passes of bounded memory (``build.py``), so a
corpus of any size needs only a few copies of one 16 MiB piece.

The folder is written under a temporary name and renamed into place, so an
interrupted run leaves no half-written cache behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..config import PrepareOptions
from ..errors import ChargenError, StorageError, write_failure
from ..files import file_sha256, temporary_dir, write_json
from ..version import __version__
from .build import SPLITS, build
from .registry import cache_root
from .sources import Source, resolve_source
from .vocab import CharVocab

FORMAT_VERSION = 1
# How files become text, beyond the bytes and options the fingerprint holds: a cache written by an
# older reader is prepared again, not reused. 2: a leading UTF-8 byte-order mark is dropped; 3: any leading
# byte-order mark is, and under UTF-8 a UTF-16/32 one decides the file's encoding.
READER_VERSION = 3


class PreparedCorpus:
    """A prepared corpus in its cache folder: vocabulary, split ids, summary."""

    def __init__(self, directory: Path, meta: dict, reused: bool):
        self.dir = Path(directory)
        self.meta = meta
        self.reused = reused
        self._vocab: CharVocab | None = None

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def vocab(self) -> CharVocab:
        if self._vocab is None:
            self._vocab = CharVocab.load(self.dir / "tokenizer.json")
        return self._vocab

    def ids(self, split: str) -> np.ndarray:
        """The split's ids: a read-only view of the memory-mapped ``ids.bin``."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}")
        m, start = self.meta, self._start(split)
        dtype = np.dtype(m["dtype"])
        if m[f"{split}_chars"] == 0:
            return np.zeros(0, dtype=dtype)
        return np.memmap(
            self.dir / "ids.bin", dtype=dtype, mode="r", offset=start * dtype.itemsize, shape=(m[f"{split}_chars"],)
        )

    def before(self, split: str, n: int) -> np.ndarray:
        """The (up to) ``n`` ids just before ``split`` in the corpus: the text it follows."""
        m, start = self.meta, self._start(split)
        n = min(n, start)
        return IdsReader(self.dir / "ids.bin", np.dtype(m["dtype"]), start - n, n)[:]

    def reader(self, split: str) -> IdsReader:
        """The split's ids for reading a little at a time, without mapping (see :class:`IdsReader`)."""
        m = self.meta
        return IdsReader(self.dir / "ids.bin", np.dtype(m["dtype"]), self._start(split), m[f"{split}_chars"])

    def counts(self, split: str = "train", chunk: int = 1 << 24) -> np.ndarray:
        """How often each id occurs in ``split`` (V,), read a chunk at a time: memory stays flat."""
        ids, total = self.reader(split), np.zeros(self.meta["vocab_size"], dtype=np.int64)
        for lo in range(0, len(ids), chunk):
            total += np.bincount(ids[lo : lo + chunk], minlength=total.size)
        return total

    def _start(self, split: str) -> int:
        """Where ``split`` begins in ``ids.bin`` (train, val and test lie back to back)."""
        m = self.meta
        return {"train": 0, "val": m["train_chars"], "test": m["train_chars"] + m["val_chars"]}[split]

    @property
    def train(self) -> np.ndarray:
        return self.ids("train")

    @property
    def val(self) -> np.ndarray:
        return self.ids("val")

    @property
    def test(self) -> np.ndarray:
        return self.ids("test")

    def summary(self) -> dict:
        """What ``chargen prepare --json`` prints."""
        m = self.meta
        keys = (
            "source",
            "fingerprint",
            "chars",
            "vocab_size",
            "train_chars",
            "val_chars",
            "test_chars",
            "unknown_chars",
            "dtype",
            "options",
        )
        out = {k: m[k] for k in keys}
        out["cache_dir"] = str(self.dir)
        out["reused"] = self.reused
        out["unknown_by_split"] = m["unknown_by_split"]
        return out


def prepare(
    source: str | os.PathLike | None = None,
    *,
    corpora_dirs: Sequence[str | os.PathLike] = (),
    cache_dir: str | os.PathLike | None = None,
    offline: bool | None = None,
    progress: bool = False,
    file_name: str | None = None,
    **options: Any,
) -> PreparedCorpus:
    """Prepare ``source`` (see :func:`chargen.data.sources.resolve_source`) and return it.

    ``file_name``: for a single-file source, the name it goes by in the
    fingerprint (a run's corpus, found again under another name).

    ``options`` are the fields of :class:`PrepareOptions`. Reuses the cache when
    the source bytes and options are unchanged.
    """
    opts = PrepareOptions(**options)
    src = resolve_source(
        source,
        corpora_dirs=corpora_dirs,
        cache_dir=cache_dir,
        text_column=opts.text_column,
        encoding=opts.encoding,
        offline=offline,
        file_name=file_name,
    )
    resolved = _resolved_options(opts, src)
    fingerprint = _fingerprint(src, resolved)
    final = cache_root(cache_dir) / "prepared" / fingerprint[:24]
    meta = _load_meta(final, fingerprint)
    if meta is not None:  # named as asked this time (the same text may come through another path)
        return PreparedCorpus(final, {**meta, "source": src.name}, reused=True)
    meta = _build_folder(src, resolved, fingerprint, final, progress)
    return PreparedCorpus(final, _load_meta(final, fingerprint) or meta, reused=False)


def _resolved_options(opts: PrepareOptions, src: Source) -> dict:
    """The options the fingerprint holds: the fractions decided, and only the keys that apply to ``src``."""
    val_fraction = src.val_fraction if opts.val_fraction is None else opts.val_fraction
    test_fraction = src.test_fraction if opts.test_fraction is None else opts.test_fraction
    if val_fraction + test_fraction >= 1.0:
        raise ChargenError("--val-fraction plus --test-fraction must be below 1, leaving text to train on")
    resolved = dict(asdict(opts), val_fraction=val_fraction, test_fraction=test_fraction)
    if src.kind != "hf":
        resolved.pop("text_column")
    if opts.vocab_base is None:  # a corpus of its own: fingerprints as before fine-tuning existed
        resolved.pop("vocab_base")
        resolved.pop("vocab_grow")
    return resolved


def _fingerprint(src: Source, resolved: dict) -> str:
    """The cache key: the format, the source's identity (its bytes) and the resolved options."""
    key = json.dumps({"format": FORMAT_VERSION, "source": src.identity(), "options": resolved}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()


def _build_folder(src: Source, resolved: dict, fingerprint: str, final: Path, progress: bool) -> dict:
    """Prepare the corpus under a temporary name beside ``final`` and rename it to ``final``; its meta."""
    try:
        return _build_into(src, resolved, fingerprint, final, progress)
    except (OSError, StorageError) as e:  # a full disk, a read-only cache: nothing half-written is left
        cause = write_failure(e)
        raise StorageError(
            final, cause, "free some space, or give another cache folder (--cache-dir or CHARGEN_CACHE)"
        ) from None


def _build_into(src: Source, resolved: dict, fingerprint: str, final: Path, progress: bool) -> dict:
    final.parent.mkdir(parents=True, exist_ok=True)
    with temporary_dir(final.parent, prefix=f".{fingerprint[:24]}.") as tmp:
        meta = build(src, resolved, tmp, progress)
        meta.update(
            source=src.name,
            fingerprint=fingerprint,
            format_version=FORMAT_VERSION,
            reader_version=READER_VERSION,
            chargen_version=__version__,
            # checked at every reuse: a damaged cache is rebuilt, never trained on
            ids_sha256=file_sha256(tmp / "ids.bin"),
            tokenizer_sha256=file_sha256(tmp / "tokenizer.json"),
        )
        write_json(tmp / "meta.json", meta)
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished the same corpus first: use its folder
            if _load_meta(final, fingerprint) is None:
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
    return meta


class IdsReader:
    """A split's ids, read on demand with plain reads (``pread``), never memory-mapped.

    What training and evaluation read through: a few hundred ids at a time
    from places far apart. Mapped pages count as this process's memory, and
    the kernel maps around every touch (megabytes: read-ahead, large folios),
    so a memory map would make the process grow with the corpus; reads go
    through the page cache and leave it flat. Supports ``len`` and slicing
    (``reader[a:b]`` is a new array), which is all its users need.
    """

    def __init__(self, path: Path, dtype: np.dtype, start: int, count: int):
        self.path, self.dtype, self.start, self.count = Path(path), np.dtype(dtype), start, count
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice):
            raise TypeError("IdsReader reads slices: reader[a:b]")
        lo, hi, step = index.indices(self.count)
        n = max(0, hi - lo)
        out = np.empty(n, dtype=self.dtype)
        if n:
            # an ndarray is a writable buffer; numpy declares __buffer__ for Python 3.12 on only
            size = os.preadv(self._fd, [out], (self.start + lo) * self.dtype.itemsize)  # type: ignore[list-item]
            if size != out.nbytes:
                raise ChargenError(
                    f"{self.path} is shorter than its meta.json says; delete the folder to prepare the corpus again"
                )
        return out if step == 1 else out[::step]

    def __array__(self, dtype: npt.DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        ids = self[:]
        return ids if dtype is None else ids.astype(dtype)

    def __del__(self):
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            os.close(fd)


def cached(fingerprint: str, cache_dir: str | os.PathLike | None = None) -> PreparedCorpus | None:
    """The prepared corpus with this fingerprint, if the cache still holds it (the source is not read)."""
    folder = cache_root(cache_dir) / "prepared" / fingerprint[:24]
    meta = _load_meta(folder, fingerprint)
    return None if meta is None else PreparedCorpus(folder, meta, reused=True)


def _load_meta(folder: Path, fingerprint: str) -> dict | None:
    try:
        with open(folder / "meta.json", encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    if (
        meta.get("fingerprint") != fingerprint
        or meta.get("format_version") != FORMAT_VERSION
        or meta.get("reader_version") != READER_VERSION
    ):
        return None
    path = folder / "ids.bin"
    try:
        if not path.is_file() or path.stat().st_size != meta["chars"] * np.dtype(meta["dtype"]).itemsize:
            return None
    except (KeyError, TypeError, ValueError):  # a meta.json damaged into other JSON
        return None
    for name, key in (("ids.bin", "ids_sha256"), ("tokenizer.json", "tokenizer_sha256")):
        try:
            if key in meta and file_sha256(folder / name) != meta[key]:
                return None  # damaged: prepared again from the source
        except ChargenError:  # unreadable
            return None
    return meta
