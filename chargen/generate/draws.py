"""The random draws of sampling: a counter-based generator (splitmix64 of seed, row and step).

A draw depends only on its own seed and step, never on a shared RNG: samplers are safe to share
between threads, the same seed gives the same text on every device and backend, and row ``i`` of a
batch drawn with seed ``s`` is exactly the single sample drawn with seed ``s + i``. NumPy only, so the
torch-free runtime draws the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    from ..config import SampleOptions
    from .rules import History

__all__ = ["draw_loop", "uniforms", "uniforms_at"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def uniforms(seeds: np.ndarray, start: int, count: int) -> np.ndarray:
    """Uniform floats in [0, 1) for each seed (rows) and steps ``start .. start+count`` (columns)."""
    return uniforms_at(
        np.asarray(seeds, dtype=np.uint64)[:, None], np.arange(start, start + count, dtype=np.uint64)[None, :]
    )


def uniforms_at(seeds: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """The uniform float in [0, 1) of each (seed, step) pair (arrays broadcast against each other)."""
    seeds, steps = np.asarray(seeds, dtype=np.uint64), np.asarray(steps, dtype=np.uint64)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by definition
        x = seeds * _GOLDEN + (steps + np.uint64(1)) * _M2
        x ^= x >> np.uint64(30)
        x *= _M1
        x ^= x >> np.uint64(27)
        x *= _M2
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))  # (rows, count)


BLOCK = 256  # steps of uniforms drawn at a time

_Array = TypeVar("_Array")  # the backend's arrays: torch.Tensor or np.ndarray
_State = TypeVar("_State")  # the backend's per-layer state
_Banned = TypeVar("_Banned")  # how the backend's pick takes the id it must never draw


def draw_loop(
    step: Callable[[_Array, _State], tuple[_Array, _State]],
    pick: Callable[[_Array, Any, float, int | None, float | None, _Banned | None, float | None], _Array],
    logits: _Array,
    state: _State,
    seeds: np.ndarray,
    opts: SampleOptions,
    banned: _Banned | None = None,
    to_array: Callable[[np.ndarray], Any] = lambda u: u,
    history: History | None = None,
) -> Iterator[_Array]:
    """The next ids (B,) ``opts.length`` times, for any backend: ``pick(logits, u, temperature, top_k, top_p,
    banned, min_p)`` draws with row ``i``'s uniforms from ``seeds[i]`` (``to_array`` puts a block of them where
    the logits are), then ``step(ids, state)`` gives the next logits; no step after the last draw. A
    ``history`` applies the rules on the logits first (``rules.py``) and records each draw."""
    greedy = opts.greedy
    u_block: Any = None  # (B, BLOCK) uniforms, as to_array gives them
    for t in range(opts.length):
        u = None
        if not greedy:
            if t % BLOCK == 0:
                u_block = to_array(uniforms(seeds, t, BLOCK))  # (B, BLOCK)
            u = u_block[:, t % BLOCK]
        x = logits if history is None else history.adjust(logits)
        ids = pick(x, u, opts.temperature, opts.top_k, opts.top_p, banned, opts.min_p)  # (B,)
        if history is not None:
            history.update(ids)
        yield ids
        if t + 1 < opts.length:
            logits, state = step(ids, state)
