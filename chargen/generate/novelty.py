"""Novelty: how much of a sample was copied from the run's training text, and samples redrawn until they
copy less (``chargen sample --novelty``, ``--max-copy``; :meth:`Sampler.longest_copy`).

The training text is the run's prepared corpus (found again from the cache, or prepared from the run's
source: ``runs/corpus.py``); its suffix array is ``data/suffix.py``'s, built on first use and kept beside
the corpus. One index per run is held in memory, shared by every sampler of the process.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..config import SampleOptions
from ..data.suffix import SuffixIndex, suffix_index
from ..errors import ChargenError
from ..runs.corpus import run_corpus
from ..runs.folder import open_run_dir

if TYPE_CHECKING:
    from ..data.vocab import CharVocab


class SamplerLike(Protocol):
    """What these functions use of a :class:`chargen.Sampler` (a protocol: the sampler imports this module)."""

    run_dir: Path | None
    vocab: CharVocab

    def generate(self, prompt: str = "", options: SampleOptions | None = None, **settings: Any) -> str | list[str]: ...

    def _options(self, prompt: str, options: SampleOptions | None, settings: dict) -> SampleOptions: ...


__all__ = ["Novel", "generate_novel", "longest_copy"]

_indexes: dict[Path, SuffixIndex] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class Novel:
    """A sample and its longest stretch copied from the training text (``copied`` characters from
    character ``offset`` of the training split); ``tries``: draws it took (``max_copy`` met, or the least
    copied of all tries when none met it)."""

    text: str
    copied: int
    offset: int
    tries: int
    met: bool


def index_of(run_dir: Path | None) -> SuffixIndex:
    """The suffix index of a run's training text, built once per process (and once per corpus on disk)."""
    if run_dir is None:
        raise ChargenError("the novelty check needs a sampler loaded from a run folder (Sampler.load)")
    key = run_dir.resolve()
    with _lock:
        if key not in _indexes:
            folder = open_run_dir(key)
            try:
                corpus = run_corpus(folder)
            except ChargenError as e:
                raise ChargenError(
                    f"the novelty check needs the run's training text, which is gone ({e}); put it back "
                    "where the run found it, or prepare it again"
                ) from None
            _indexes[key] = suffix_index(corpus)
        return _indexes[key]


def longest_copy(sampler: SamplerLike, text: str) -> tuple[int, int]:
    """See :meth:`Sampler.longest_copy`."""
    return index_of(sampler.run_dir).longest_copy(sampler.vocab.encode_known(text))


def generate_novel(
    sampler: SamplerLike, prompt: str, options: SampleOptions, max_copy: int | None = None, tries: int = 10
) -> list[Novel]:
    """``options.n`` samples, each with its longest copy; with ``max_copy``, a sample that copies more is
    drawn again, up to ``tries`` draws, and the least copied draw is kept. Draw ``j`` (from 0) of sample
    ``i`` uses seed ``seed + i + j * n``, so the first draws are ``generate``'s own."""
    if max_copy is not None and (not isinstance(max_copy, int) or isinstance(max_copy, bool) or max_copy < 0):
        raise ChargenError(f"max_copy must be a whole number of characters, at least 0, got {max_copy!r}")
    if not isinstance(tries, int) or isinstance(tries, bool) or tries < 1:
        raise ChargenError(f"tries must be a whole number, at least 1, got {tries!r}")
    opts = sampler._options(prompt, options, {})
    assert opts.seed is not None  # _options draws one when none is given
    index = index_of(sampler.run_dir)
    if opts.beam is not None:  # one search, nothing to draw again
        if max_copy is not None:
            raise ChargenError("a beam search draws nothing, so max_copy cannot draw again; sample, or drop max_copy")
        texts = sampler.generate(prompt, opts)
        return [Novel(t, *index.longest_copy(sampler.vocab.encode_known(t)), 1, True) for t in _listed(texts)]
    n, pending = opts.n, list(range(opts.n))
    best: list[Novel | None] = [None] * n
    for j in range(tries if max_copy is not None else 1):
        for i in pending:
            text = sampler.generate(prompt, replace(opts, n=1, seed=(opts.seed + i + j * n) % (1 << 63)))
            assert isinstance(text, str)  # n=1
            copied, offset = index.longest_copy(sampler.vocab.encode_known(text))
            met = max_copy is None or copied <= max_copy
            old = best[i]
            if old is None or copied < old.copied:
                best[i] = Novel(text, copied, offset, j + 1, met)
            else:
                best[i] = replace(old, tries=j + 1)
        pending = [i for i in pending if not best[i].met]  # type: ignore[union-attr]  # each filled above
        if not pending:
            break
    return [b for b in best if b is not None]  # every one, filled by the first draw


def _listed(texts: str | list[str]) -> list[str]:
    return [texts] if isinstance(texts, str) else texts
