"""Stop strings: where a text ends at one, and how much of its end must be held back because it may be
the start of one (the sampler's streams and the server's batcher share these)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["cut_at_stop", "ends_with_stop", "partial_stop_suffix"]


def ends_with_stop(chars: Sequence[str], stops: tuple[str, ...]) -> bool:
    """Whether the characters so far end with one of ``stops``."""
    longest = max(len(s) for s in stops)
    tail = "".join(chars[-longest:])
    return any(tail.endswith(s) for s in stops)


def cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    """Text up to the first place where a stop string appears (the stop string removed)."""
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if i >= 0:
            cut = min(cut, i)
    return text[:cut]


def partial_stop_suffix(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best
