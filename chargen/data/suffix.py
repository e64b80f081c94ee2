"""Novelty: the longest stretch of a text that also occurs in a corpus's training text, by a suffix array.

A suffix array lists the positions of the training text in the order of the suffixes that start there, so
every occurrence of a string is one contiguous range of it, found by binary search. It is built once per
prepared corpus (libdivsufsort, through pydivsufsort: the ``novelty`` extra), stored beside the corpus's
``ids.bin`` as ``train.sa.npy`` (int32 below 2**31 characters: 4 bytes a character) and memory-mapped
after, so a check reads only the pages it touches.

:meth:`SuffixIndex.longest_copy` computes matching statistics: for each position of the query, the longest
match starting there, reusing the previous one (a match shortened by its first character is still a
match), so the work grows with the query's length, not the corpus's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ChargenError
from ..files import atomic_write
from .prepared import PreparedCorpus

__all__ = ["SuffixIndex", "build_suffix_array", "suffix_index"]

SA_FILE = "train.sa.npy"
SPOT_CHECKS = 64  # adjacent pairs of the stored array checked to be in order when it is opened


def build_suffix_array(ids: np.ndarray) -> np.ndarray:
    """The suffix array of ``ids`` (positions, int32 where they fit, else int64)."""
    try:
        from pydivsufsort import divsufsort
    except ImportError:
        raise ChargenError('the novelty check needs pydivsufsort: pip install "chargen[novelty]"') from None
    sa = divsufsort(np.array(ids, copy=True))  # its own writable copy: pydivsufsort refuses read-only arrays
    return sa.astype(np.int32) if len(ids) < 2**31 else sa.astype(np.int64)


class SuffixIndex:
    """A text (ids) and its suffix array; :meth:`longest_copy` finds the longest stretch of a query in it."""

    def __init__(self, text: np.ndarray, sa: np.ndarray):
        if len(text) != len(sa):
            raise ValueError("the suffix array and the text differ in length")
        self.text, self.sa, self.n = text, sa, len(text)

    def _key(self, j: int, depth: int) -> int:
        """The character at ``depth`` of the ``j``-th suffix in order; -1 past its end (shorter sorts first)."""
        p = int(self.sa[j]) + depth
        return int(self.text[p]) if p < self.n else -1

    def _narrow(self, lo: int, hi: int, depth: int, c: int) -> tuple[int, int]:
        """Of the suffixes lo..hi (all sharing their first ``depth`` characters), those whose next is ``c``."""
        a, b = lo, hi
        while a < b:  # first with key >= c
            mid = (a + b) // 2
            if self._key(mid, depth) < c:
                a = mid + 1
            else:
                b = mid
        first, b = a, hi
        while a < b:  # first with key > c
            mid = (a + b) // 2
            if self._key(mid, depth) <= c:
                a = mid + 1
            else:
                b = mid
        return first, a

    def _compare(self, j: int, pattern: np.ndarray) -> int:
        """-1, 0 or 1: the ``j``-th suffix's first ``len(pattern)`` characters against ``pattern``."""
        p = int(self.sa[j])
        head = self.text[p : p + len(pattern)]
        differ = np.flatnonzero(head != pattern[: len(head)])
        if differ.size:
            return -1 if head[differ[0]] < pattern[differ[0]] else 1
        return -1 if len(head) < len(pattern) else 0

    def _range(self, pattern: np.ndarray) -> tuple[int, int]:
        """The suffixes that start with ``pattern``: two binary searches, each probe one slice compared."""
        a, b = 0, self.n
        while a < b:
            mid = (a + b) // 2
            if self._compare(mid, pattern) < 0:
                a = mid + 1
            else:
                b = mid
        first, b = a, self.n
        while a < b:
            mid = (a + b) // 2
            if self._compare(mid, pattern) <= 0:
                a = mid + 1
            else:
                b = mid
        return first, a

    def longest_copy(self, query: np.ndarray) -> tuple[int, int]:
        """``(length, offset)``: the longest stretch of ``query`` (ids; negative ones never match) that occurs
        in the text, and where one occurrence starts there; ``(0, 0)`` when no character occurs."""
        q = np.asarray(query, dtype=np.int64)
        best, where, length = 0, 0, 0
        for i in range(len(q)):
            length = max(length - 1, 0)
            lo, hi = self._range(q[i : i + length]) if length else (0, self.n)
            while i + length < len(q) and q[i + length] >= 0:
                nlo, nhi = self._narrow(lo, hi, length, int(q[i + length]))
                if nlo == nhi:
                    break
                lo, hi, length = nlo, nhi, length + 1
            if length > best:
                best, where = length, int(self.sa[lo])
        return best, where


def suffix_index(corpus: PreparedCorpus) -> SuffixIndex:
    """The suffix index of ``corpus``'s training split: read from its folder, or built and stored there."""
    text = corpus.ids("train")
    if len(text) == 0:
        raise ChargenError("the run's training text is empty: there is nothing to compare with")
    path = corpus.dir / SA_FILE
    sa = _load(path, text)
    if sa is None:
        built = build_suffix_array(text)
        with atomic_write(path) as tmp, open(tmp, "wb") as f:
            np.save(f, built)
        sa = _load(path, text)
        assert sa is not None  # just written and checked
    return SuffixIndex(text, sa)


def _load(path: Path, text: np.ndarray) -> np.ndarray | None:
    """The stored suffix array, memory-mapped, if it is there and fits ``text`` (a damaged or stale one is
    None, and is built again)."""
    try:
        sa = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if sa.ndim != 1 or len(sa) != len(text) or sa.dtype.kind != "i":
        return None
    rng = np.random.default_rng(len(text))
    for j in rng.integers(0, max(len(sa) - 1, 1), size=min(SPOT_CHECKS, len(sa) - 1)).tolist():
        a, b = int(sa[j]), int(sa[j + 1])
        if not (0 <= a < len(text) and 0 <= b < len(text)) or not _before(text, a, b):
            return None
    return sa


def _before(text: np.ndarray, a: int, b: int, window: int = 4096) -> bool:
    """Whether the suffix at ``a`` sorts before the one at ``b`` (compared a window at a time)."""
    while True:
        x, y = text[a : a + window], text[b : b + window]
        k = min(len(x), len(y))
        differ = np.flatnonzero(x[:k] != y[:k])
        if differ.size:
            return bool(x[differ[0]] < y[differ[0]])
        if len(x) < window or len(y) < window:
            return len(x) < len(y)  # one ended: the shorter (a prefix of the other) sorts first
        a, b = a + window, b + window
