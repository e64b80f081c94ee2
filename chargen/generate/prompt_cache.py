"""The state after a prompt, kept for prompts read again: a server's clients often send the same prompt (a
page's default, a template), and a long prompt costs a forward pass over every character of it.

:class:`PromptCache` keeps the logits and the recurrent state after a prompt (one row: a few kilobytes for a
2x256 LSTM), keyed by the prompt's ids, the least recently used dropped past ``entries``. A hit gives exactly
what reading the prompt gives (the same arrays, repeated for each row), so texts do not depend on the cache.
Only whole prompts are matched: a prompt that extends a cached one is read whole, since a state carried
from a prefix can differ from a whole read in the last bits (matrix products of another shape) and would
change a text at a near tie. Prompts shorter than ``min_chars`` are read, not kept: that costs less than
keeping them. Safe to share between threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["PromptCache"]


class PromptCache:
    """Least-recently-used logits and state after prompts, for one runtime (see the module docstring)."""

    def __init__(
        self,
        read: Callable[[np.ndarray, int], tuple[Any, Any]],
        repeat: Callable[[Any, Any, int], tuple[Any, Any]],
        entries: int = 256,
        min_chars: int = 32,
    ):
        """``read(prompt_ids, batch)`` reads a prompt (``Sampler._prime``); ``repeat(logits, state, batch)``
        makes ``batch`` rows of one (the runtime's ``repeat``)."""
        self.read, self.repeat, self.entries, self.min_chars = read, repeat, entries, min_chars
        self._kept: OrderedDict[bytes, tuple[Any, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def prime(self, prompt_ids: np.ndarray, batch: int) -> tuple[Any, Any]:
        """Logits (batch, V) after the prompt and the per-layer state, read or kept (as ``Sampler._prime``)."""
        if self.entries == 0 or len(prompt_ids) < self.min_chars:
            return self.read(prompt_ids, batch)
        key = np.asarray(prompt_ids, dtype=np.int64).tobytes()
        with self._lock:
            kept = self._kept.get(key)
            if kept is not None:
                self._kept.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
        if kept is None:
            kept = self.read(prompt_ids, 1)
            with self._lock:
                self._kept[key] = kept
                while len(self._kept) > self.entries:
                    self._kept.popitem(last=False)
        return self.repeat(*kept, batch)

    def __len__(self) -> int:
        return len(self._kept)
