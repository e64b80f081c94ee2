"""Prepared corpora: character ids on disk, cached by a content fingerprint.

``prepare(source, ...)`` turns a source into three id arrays (train, val, test:
contiguous, in that order) plus the vocabulary, in a cache folder named by a
fingerprint of the source bytes and of every option that changes the ids. A
second call with the same input and options reuses the folder.

The text streams through two passes of bounded memory, so a corpus of any
size needs only a few copies of one 16 MiB piece:

1. count every character, keeping the counts of each piece (sparse);
2. encode with a numpy lookup table over *every* character of the corpus, in
   code-point order, appending to ``ids.bin``.

The vocabulary is built from the training split only: its counts are the
piece counts of pass 1 up to the split, plus a count of the one piece that
straddles it. When that vocabulary is smaller than the set of all characters
(validation-only characters, ``--min-char-count``), the ids are remapped in
one cheap id-to-id pass; otherwise the ids of pass 2 are already final.

The folder is written under a temporary name and renamed into place, so an
interrupted run leaves no half-written cache behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..version import __version__
from .sources import Source, resolve_source
from ..errors import ChargenError
from ..files import atomic_write, temporary_dir, write_json
from .registry import cache_root
from ..config import PrepareOptions
from .vocab import MAX_CODEPOINT, UNK, CharVocab, codepoints, id_dtype, make_normalizer

FORMAT_VERSION = 1
# How files become text, beyond the bytes and options the fingerprint holds: a cache written by an
# older reader is prepared again, not reused. 2: a leading UTF-8 byte-order mark is dropped; 3: any leading
# byte-order mark is, and under UTF-8 a UTF-16/32 one decides the file's encoding.
READER_VERSION = 3
SPLITS = ("train", "val", "test")


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
        return np.memmap(self.dir / "ids.bin", dtype=dtype, mode="r", offset=start * dtype.itemsize,
                         shape=(m[f"{split}_chars"],))

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
            total += np.bincount(ids[lo:lo + chunk], minlength=total.size)
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
        keys = ("source", "fingerprint", "chars", "vocab_size", "train_chars", "val_chars",
                "test_chars", "unknown_chars", "dtype", "options")
        out = {k: m[k] for k in keys}
        out["cache_dir"] = str(self.dir)
        out["reused"] = self.reused
        out["unknown_by_split"] = m["unknown_by_split"]
        return out


def prepare(source: str | os.PathLike | None = None, *,
            corpora_dirs: Sequence[str | os.PathLike] = (),
            cache_dir: str | os.PathLike | None = None,
            offline: bool | None = None,
            progress: bool = False,
            file_name: str | None = None,
            **options) -> PreparedCorpus:
    """Prepare ``source`` (see :func:`chargen.corpus.resolve_source`) and return it.

    ``file_name``: for a single-file source, the name it goes by in the
    fingerprint (a run's corpus, found again under another name).

    ``options`` are the fields of :class:`PrepareOptions`. Reuses the cache when
    the source bytes and options are unchanged.
    """
    opts = PrepareOptions(**options)
    src = resolve_source(source, corpora_dirs=corpora_dirs, cache_dir=cache_dir,
                         text_column=opts.text_column, encoding=opts.encoding, offline=offline, file_name=file_name)
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
    if opts.vocab_base is None:   # a corpus of its own: fingerprints as before fine-tuning existed
        resolved.pop("vocab_base")
        resolved.pop("vocab_grow")
    return resolved


def _fingerprint(src: Source, resolved: dict) -> str:
    """The cache key: the format, the source's identity (its bytes) and the resolved options."""
    key = json.dumps({"format": FORMAT_VERSION, "source": src.identity(), "options": resolved}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()


def _build_folder(src: Source, resolved: dict, fingerprint: str, final: Path, progress: bool) -> dict:
    """Prepare the corpus under a temporary name beside ``final`` and rename it to ``final``; its meta."""
    final.parent.mkdir(parents=True, exist_ok=True)
    with temporary_dir(final.parent, prefix=f".{fingerprint[:24]}.") as tmp:
        meta = _build(src, resolved, tmp, progress)
        meta.update(source=src.name, fingerprint=fingerprint, format_version=FORMAT_VERSION,
                    reader_version=READER_VERSION, chargen_version=__version__)
        write_json(tmp / "meta.json", meta)
        try:
            os.rename(tmp, final)
        except OSError:   # another process finished the same corpus first: use its folder
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

    def __getitem__(self, index) -> np.ndarray:
        if not isinstance(index, slice):
            raise TypeError("IdsReader reads slices: reader[a:b]")
        lo, hi, step = index.indices(self.count)
        n = max(0, hi - lo)
        out = np.empty(n, dtype=self.dtype)
        if n:
            size = os.preadv(self._fd, [out], (self.start + lo) * self.dtype.itemsize)
            if size != out.nbytes:
                raise ChargenError(f"{self.path} is shorter than its meta.json says; delete the folder to "
                                   "prepare the corpus again")
        return out if step == 1 else out[::step]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
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
    if (meta.get("fingerprint") != fingerprint or meta.get("format_version") != FORMAT_VERSION
            or meta.get("reader_version") != READER_VERSION):
        return None
    path = folder / "ids.bin"
    if not path.is_file() or path.stat().st_size != meta["chars"] * np.dtype(meta["dtype"]).itemsize:
        return None
    return meta


def _normalized_pieces(src: Source, opts: dict, progress_bar=None) -> Iterator[str]:
    norm = make_normalizer(opts["normalize"], opts["lowercase"])
    for piece in src.pieces(opts["encoding"], opts["errors"]):
        if progress_bar is not None:
            progress_bar.update(len(piece))
        yield norm.normalize_str(piece) if norm is not None else piece


def _build(src: Source, opts: dict, out: Path, progress: bool) -> dict:
    """Write ``ids.bin`` and ``tokenizer.json`` into ``out``; return the summary for meta.json."""
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(desc="prepare: counting", unit="char", unit_scale=True, leave=False)
    piece_counts = _count_pieces(src, opts, bar)
    total = sum(n for n, _, _ in piece_counts)
    if total == 0:
        what = "is empty after normalization" if opts["normalize"] != "none" or opts["lowercase"] else "is empty"
        raise ChargenError(f"{src.name} {what}; pass a source that holds text")

    # Contiguous split: int() of the train share, so 90% of tiny shakespeare is
    # the standard 1,003,854 characters; test takes the very end.
    n_train = int(total * (1.0 - opts["val_fraction"] - opts["test_fraction"]))
    n_test = int(total * opts["test_fraction"])
    sizes = {"train": n_train, "val": total - n_train - n_test, "test": n_test}
    if n_train < 2:
        raise ChargenError(f"{src.name} has only {total} characters, leaving {n_train} to train on; "
                           "pass a longer text or a smaller --val-fraction")

    # Provisional vocabulary: every character of the corpus, in code-point order.
    every = np.unique(np.concatenate([nz for _, nz, _ in piece_counts]))
    train_counts = _encode(src, opts, bar, piece_counts, every, n_train, out / "ids.bin")
    if bar is not None:
        bar.close()

    keep = train_counts >= opts["min_char_count"]
    added = []
    unknown = {s: 0 for s in SPLITS}
    if opts.get("vocab_base") is None:
        with_unk = not bool(keep.all())
        vocab = CharVocab.build((chr(c) for c in every[keep]), with_unk=with_unk,
                                normalize=opts["normalize"], lowercase=opts["lowercase"])
        if with_unk:
            # provisional id -> final id: kept characters shift up by one past UNK (0).
            remap = np.where(keep, np.cumsum(keep), 0).astype(vocab.dtype)
            unknown = _remap_ids(out / "ids.bin", id_dtype(every.size), remap, vocab.dtype, sizes, unk=0)
    else:
        vocab, remap, added = _extend(opts["vocab_base"], every, keep, opts)
        unknown = _remap_ids(out / "ids.bin", id_dtype(every.size), remap, vocab.dtype, sizes,
                             unk=vocab.unk_id if vocab.unk_id is not None else -1)
        with_unk = vocab.unk_id is not None
    vocab.save(out / "tokenizer.json")
    return {
        "chars": total, "vocab_size": len(vocab), "dtype": vocab.dtype.name,
        "train_chars": sizes["train"], "val_chars": sizes["val"], "test_chars": sizes["test"],
        "unknown_chars": sum(unknown.values()), "unknown_by_split": unknown,
        "has_unk": with_unk, "added_chars": len(added), "options": opts,
    }


def _extend(base: list[str], every: np.ndarray, keep: np.ndarray, opts: dict):
    """A base vocabulary whose ids stay as they are, with this corpus's other kept characters after them
    (``vocab_grow``) or mapped to the unknown token; (vocab, provisional id -> final id, added characters).
    Base characters keep their ids even where this corpus has too few of them."""
    chars = [chr(c) for c in every]
    index = {t: i for i, t in enumerate(base)}
    added = [ch for ch, k in zip(chars, keep) if k and ch not in index] if opts["vocab_grow"] else []
    tokens = list(base) + added
    if UNK not in index and len(set(chars) - set(tokens)):
        tokens.append(UNK)   # at the end: base ids do not move
    vocab = CharVocab.from_tokens(tokens, normalize=opts["normalize"], lowercase=opts["lowercase"])
    final = {t: i for i, t in enumerate(tokens)}
    remap = np.array([final.get(ch, final.get(UNK, 0)) for ch in chars], dtype=vocab.dtype)
    return vocab, remap, added


def _count_pieces(src: Source, opts: dict, bar) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Pass 1: for every piece, its length and its sparse character counts (code points, counts)."""
    piece_counts = []
    for piece in _normalized_pieces(src, opts, bar):
        cps = codepoints(piece)
        c = np.bincount(cps)
        nz = np.flatnonzero(c).astype(np.uint32)
        piece_counts.append((cps.size, nz, c[nz]))
    return piece_counts


def _encode(src: Source, opts: dict, bar, piece_counts, every: np.ndarray, n_train: int,
            path: Path) -> np.ndarray:
    """Pass 2: write provisional ids (indices into ``every``) to ``path``; return the training counts.

    The training counts come from pass 1's piece counts, plus a count of the one
    piece that straddles the end of the training split.
    """
    prov_dtype = id_dtype(every.size)
    prov_lut = np.zeros(MAX_CODEPOINT + 1, dtype=prov_dtype)
    prov_lut[every] = np.arange(every.size, dtype=prov_dtype)
    train_counts = np.zeros(every.size, dtype=np.int64)
    if bar is not None:
        bar.set_description("prepare: encoding")
        bar.reset(total=sum(n for n, _, _ in piece_counts))
    pos = written = 0
    with open(path, "wb") as f:
        for i, piece in enumerate(_normalized_pieces(src, opts, bar)):
            ids = prov_lut[codepoints(piece)]
            f.write(ids.tobytes())
            written += ids.size
            if i >= len(piece_counts):
                break  # the source grew since pass 1: reported below
            n, nz, counts = piece_counts[i]
            if pos + n <= n_train:
                np.add.at(train_counts, prov_lut[nz], counts)
            elif pos < n_train:
                train_counts += np.bincount(ids[: n_train - pos], minlength=every.size)
            pos += n
    if written != sum(n for n, _, _ in piece_counts):
        raise ChargenError(f"{src.name} changed while it was being prepared; run again")
    return train_counts


def _remap_ids(path: Path, src_dtype: np.dtype, remap: np.ndarray, dtype: np.dtype,
               sizes: dict[str, int], chunk: int = 1 << 24, unk: int = 0) -> dict[str, int]:
    """Rewrite ``path`` through an id -> id table; count the unknown token (id ``unk``) per split."""
    bounds, start = {}, 0
    for s in SPLITS:
        bounds[s] = (start, start + sizes[s])
        start += sizes[s]
    unknown = {s: 0 for s in SPLITS}
    # Read with plain reads, not a memory map: mapped pages count as this process's memory.
    with open(path, "rb") as src, atomic_write(path) as tmp, open(tmp, "wb") as f:
        lo = 0
        while (ids := np.fromfile(src, dtype=src_dtype, count=chunk)).size:
            ids = remap[ids]
            f.write(ids.tobytes())
            for s, (a, b) in bounds.items():
                a, b = max(a - lo, 0), min(b - lo, ids.size)
                if a < b:
                    unknown[s] += int(np.count_nonzero(ids[a:b] == unk))
            lo += ids.size
    return unknown
