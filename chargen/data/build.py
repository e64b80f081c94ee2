"""Building a prepared corpus: two streaming passes over the source, then the vocabulary.

1. count every character, keeping the counts of each piece (sparse);
2. encode with a numpy lookup table over *every* character of the corpus, in
   code-point order, appending to ``ids.bin``.

The vocabulary is built from the training split only: its counts are the
piece counts of pass 1 up to the split, plus a count of the one piece that
straddles it. When that vocabulary is smaller than the set of all characters
(validation-only characters, ``--min-char-count``), the ids are remapped in
one cheap id-to-id pass; otherwise the ids of pass 2 are already final.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ChargenError
from ..files import atomic_write
from .sources import Source
from .vocab import MAX_CODEPOINT, UNK, CharVocab, codepoints, id_dtype, make_normalizer

if TYPE_CHECKING:
    from tqdm import tqdm

SPLITS = ("train", "val", "test")


def _normalized_pieces(src: Source, opts: dict[str, Any], progress_bar: tqdm | None = None) -> Iterator[str]:
    norm = make_normalizer(opts["normalize"], opts["lowercase"])
    for piece in src.pieces(opts["encoding"], opts["errors"]):
        if progress_bar is not None:
            progress_bar.update(len(piece))
        yield norm.normalize_str(piece) if norm is not None else piece


def build(src: Source, opts: dict[str, Any], out: Path, progress: bool) -> dict[str, Any]:
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
        raise ChargenError(
            f"{src.name} has only {total} characters, leaving {n_train} to train on; "
            "pass a longer text or a smaller --val-fraction"
        )

    # Provisional vocabulary: every character of the corpus, in code-point order.
    every = np.unique(np.concatenate([nz for _, nz, _ in piece_counts]))
    train_counts = _encode(src, opts, bar, piece_counts, every, n_train, out / "ids.bin")
    if bar is not None:
        bar.close()

    vocab, unknown, added = _final_vocab(out / "ids.bin", every, train_counts, sizes, opts)
    vocab.save(out / "tokenizer.json")
    return {
        "chars": total,
        "vocab_size": len(vocab),
        "dtype": vocab.dtype.name,
        "train_chars": sizes["train"],
        "val_chars": sizes["val"],
        "test_chars": sizes["test"],
        "unknown_chars": sum(unknown.values()),
        "unknown_by_split": unknown,
        "has_unk": vocab.unk_id is not None,
        "added_chars": len(added),
        "options": opts,
    }


def _final_vocab(
    path: Path, every: np.ndarray, train_counts: np.ndarray, sizes: dict[str, int], opts: dict[str, Any]
) -> tuple[CharVocab, dict[str, int], list[str]]:
    """The vocabulary from the training counts, with ``ids.bin`` remapped to it where the provisional
    ids differ; (vocab, unknown characters by split, added characters)."""
    keep = train_counts >= opts["min_char_count"]
    added: list[str] = []
    unknown = dict.fromkeys(SPLITS, 0)
    if opts.get("vocab_base") is None:
        with_unk = not bool(keep.all())
        vocab = CharVocab.build(
            (chr(c) for c in every[keep]), with_unk=with_unk, normalize=opts["normalize"], lowercase=opts["lowercase"]
        )
        if with_unk:
            # provisional id -> final id: kept characters shift up by one past UNK (0).
            remap = np.where(keep, np.cumsum(keep), 0).astype(vocab.dtype)
            unknown = _remap_ids(path, id_dtype(every.size), remap, vocab.dtype, sizes, unk=0)
    else:
        vocab, remap, added = _extend(opts["vocab_base"], every, keep, opts)
        unknown = _remap_ids(
            path, id_dtype(every.size), remap, vocab.dtype, sizes, unk=vocab.unk_id if vocab.unk_id is not None else -1
        )
    return vocab, unknown, added


def _extend(
    base: list[str], every: np.ndarray, keep: np.ndarray, opts: dict[str, Any]
) -> tuple[CharVocab, np.ndarray, list[str]]:
    """A base vocabulary whose ids stay as they are, with this corpus's other kept characters after them
    (``vocab_grow``) or mapped to the unknown token; (vocab, provisional id -> final id, added characters).
    Base characters keep their ids even where this corpus has too few of them."""
    chars = [chr(c) for c in every]
    index = {t: i for i, t in enumerate(base)}
    added = [ch for ch, k in zip(chars, keep) if k and ch not in index] if opts["vocab_grow"] else []
    tokens = list(base) + added
    if UNK not in index and len(set(chars) - set(tokens)):
        tokens.append(UNK)  # at the end: base ids do not move
    vocab = CharVocab.from_tokens(tokens, normalize=opts["normalize"], lowercase=opts["lowercase"])
    final = {t: i for i, t in enumerate(tokens)}
    remap = np.array([final.get(ch, final.get(UNK, 0)) for ch in chars], dtype=vocab.dtype)
    return vocab, remap, added


def _count_pieces(src: Source, opts: dict[str, Any], bar: tqdm | None) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Pass 1: for every piece, its length and its sparse character counts (code points, counts)."""
    piece_counts = []
    for piece in _normalized_pieces(src, opts, bar):
        cps = codepoints(piece)
        c = np.bincount(cps)
        nz = np.flatnonzero(c).astype(np.uint32)
        piece_counts.append((cps.size, nz, c[nz]))
    return piece_counts


def _encode(
    src: Source,
    opts: dict[str, Any],
    bar: tqdm | None,
    piece_counts: list[tuple[int, np.ndarray, np.ndarray]],
    every: np.ndarray,
    n_train: int,
    path: Path,
) -> np.ndarray:
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


def _remap_ids(
    path: Path,
    src_dtype: np.dtype,
    remap: np.ndarray,
    dtype: np.dtype,
    sizes: dict[str, int],
    chunk: int = 1 << 24,
    unk: int = 0,
) -> dict[str, int]:
    """Rewrite ``path`` through an id -> id table; count the unknown token (id ``unk``) per split."""
    bounds, start = {}, 0
    for s in SPLITS:
        bounds[s] = (start, start + sizes[s])
        start += sizes[s]
    unknown = dict.fromkeys(SPLITS, 0)
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
