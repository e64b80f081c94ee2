"""Choosing among whole continuations: best-of-N sampling and beam search.

**Best of N** (``best_of``, OpenAI's): draw N samples (sample ``i`` with seed ``seed + i``, as ``n=N`` would)
and keep the ``n`` with the highest total log-probability under the model (its own distribution: no
temperature, no rules), best first. The total is over the characters returned (a stop string cut off is
not counted).

**Beam search** (``beam=W``): keep the W likeliest partial continuations by total log-probability, the
rules on the logits (bias, penalties) applied and nothing drawn (temperature, top-k, top-p, min-p and the
seed do not apply). A continuation ends at ``length`` characters or at a stop string (cut before it). The
search ends when ``n`` continuations have ended and no live one scores above them (a score only falls as a
continuation grows), and returns the ``n`` best, best first. ``beam=1`` is greedy decoding exactly.
Candidates tied in score keep the lower beam, then the lower id, as ``argmax`` does.

Both run on either backend: the search keeps its scores and rules on the host in NumPy, and asks the
backend only to step the network and to pick rows of its state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..errors import ChargenError
from .rules import NUMPY_OPS
from .stops import cut_at_stop, ends_with_stop

if TYPE_CHECKING:
    from ..config import SampleOptions
    from ..data.vocab import CharVocab
    from .rules import ArrayOps, History


class Sampler(Protocol):
    """What a search uses of a :class:`chargen.Sampler` (a protocol: the sampler imports this module)."""

    vocab: CharVocab
    runtime: Any  # a NumpyRuntime or a TorchRuntime

    def generate(self, prompt: str = "", options: SampleOptions | None = None, **settings: Any) -> str | list[str]: ...

    def encode(self, text: str, unknown: str = "error") -> np.ndarray: ...

    def _prime(self, prompt_ids: np.ndarray, batch: int) -> tuple[Any, Any]: ...

    def _history(
        self, opts: SampleOptions, prompt_ids: np.ndarray, batch: int, ops: ArrayOps | None = None
    ) -> History | None: ...


__all__ = ["Stopped", "beam_search", "best_of", "continuation_logprob", "search"]


class Stopped(ChargenError):
    """A search stopped before its end, as its caller asked (a server stopping, a client gone)."""


def search(sampler: Sampler, prompt: str, opts: SampleOptions) -> list[str]:
    """The ``n`` texts that beam search or best-of-N chooses (see the module docstring), best first."""
    found = beam_search(sampler, prompt, opts) if opts.beam is not None else best_of(sampler, prompt, opts)
    return [text for text, _ in found]


def continuation_logprob(sampler: Sampler, prompt_ids: np.ndarray, text: str) -> float:
    """The total log-probability of ``text`` after the prompt's ids, under the model (as ``score`` reads)."""
    if not text:
        return 0.0
    scorer = sampler.runtime.scorer(sampler.vocab.start_id)
    if prompt_ids.size:
        scorer(prompt_ids)
    return float(scorer(sampler.vocab.encode_array(text, strict=False).astype(np.int64)).sum())


def best_of(sampler: Sampler, prompt: str, opts: SampleOptions) -> list[tuple[str, float]]:
    """``(text, total log-probability)`` of the ``n`` likeliest of ``best_of`` samples, best first (ties: the
    earlier draw)."""
    assert opts.best_of is not None  # search() sends only best_of requests here
    drawn = sampler.generate(prompt, replace(opts, n=opts.best_of, best_of=None))
    drawn = [drawn] if isinstance(drawn, str) else drawn
    prompt_ids = sampler.encode(prompt, opts.unknown)
    scored = [(text, continuation_logprob(sampler, prompt_ids, text)) for text in drawn]
    return sorted(scored, key=lambda pair: -pair[1])[: opts.n]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return x - top - np.log(np.exp(x - top).sum(axis=-1, keepdims=True))


def beam_search(
    sampler: Sampler, prompt: str, opts: SampleOptions, stop: Callable[[], bool] = lambda: False
) -> list[tuple[str, float]]:
    """``(text, total log-probability)`` of the ``n`` best continuations of a beam of width ``beam``, best
    first (fewer only when the vocabulary allows fewer distinct continuations: the last is then repeated).
    ``stop`` is asked before each step: when it says so, :class:`Stopped` is raised."""
    assert opts.beam is not None  # search() sends only beam requests here
    rt, unk = sampler.runtime, sampler.vocab.unk_id
    prompt_ids = sampler.encode(prompt, opts.unknown)
    logits, state = sampler._prime(prompt_ids, 1)
    history = sampler._history(opts, prompt_ids, 1, NUMPY_OPS)  # on the host, whatever the backend
    live: list[tuple[str, float]] = [("", 0.0)]
    ended: dict[str, float] = {} if opts.length else {"": 0.0}
    for t in range(opts.length):
        if stop():
            raise Stopped("the search was stopped")
        x = rt.host_logits(logits)
        lp = _log_softmax(history.adjust(x) if history is not None else x)
        if unk is not None:
            lp[:, unk] = -np.inf
        rows, ids, live = _extend(live, lp, sampler.vocab.chars, opts, ended)
        if t + 1 == opts.length:
            for text, score in live:  # the length reached: the live continuations end here
                _end(ended, text, score)
            break
        if not live or _settled(ended, live, opts.n):
            break
        index = np.asarray(rows)
        state, ids_arr = rt.select(state, index), np.asarray(ids, dtype=np.int64)
        if history is not None:
            history = history.select(index)
            history.update(ids_arr)
        logits, state = rt.advance(ids_arr, state)
    best = sorted(ended.items(), key=lambda pair: -pair[1])[: opts.n]
    return best + best[-1:] * (opts.n - len(best))


def _end(ended: dict[str, float], text: str, score: float) -> None:
    ended[text] = max(score, ended.get(text, -np.inf))


def _extend(
    live: list[tuple[str, float]], lp: np.ndarray, chars: list[str], opts: SampleOptions, ended: dict[str, float]
) -> tuple[list[int], list[int], list[tuple[str, float]]]:
    """The candidates (each live continuation and a character) best first: those that reach a stop string
    end (cut before it), the first ``beam`` others go on: their parent rows, ids, and texts with scores."""
    assert opts.beam is not None  # a beam search's options
    totals = np.array([score for _, score in live])[:, None] + lp  # (beams, V)
    V, flat = totals.shape[1], totals.ravel()
    rows: list[int] = []
    ids: list[int] = []
    out: list[tuple[str, float]] = []
    for k in np.argsort(-flat, kind="stable"):
        score = float(flat[k])
        if score == -np.inf or len(out) == opts.beam:
            break
        row, i = divmod(int(k), V)
        text = live[row][0] + chars[i]
        if opts.stop and ends_with_stop(text, opts.stop):
            _end(ended, cut_at_stop(text, opts.stop), score)
            continue
        rows.append(row)
        ids.append(i)
        out.append((text, score))
    return rows, ids, out


def _settled(ended: dict[str, float], live: list[tuple[str, float]], n: int) -> bool:
    """Whether the ``n`` best ended continuations can no longer be beaten by a live one."""
    if len(ended) < n:
        return False
    nth = sorted(ended.values(), reverse=True)[n - 1]
    return all(score <= nth for _, score in live)
