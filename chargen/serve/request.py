"""One submitted generation as its caller sees it: a :class:`Request` whose events the batcher hands over
step by step, and which the caller takes, waits for, or cancels."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import numpy as np

from ..config import SampleOptions

# Events per row a request may hold that its consumer has not taken (about a character each, two with
# log-probabilities). A stream's consumer stops taking when its client stops reading (the server's writes
# wait for the socket); past this the request is cancelled, so a stalled client holds at most this much,
# not everything its rows would decode. A reading client is never near it: it takes every few steps.
OUTBOX_LIMIT = 4096


class Request:
    """One submitted generation of ``n`` rows. Its events are ``("text", row, piece)`` and, once per
    row, ``("end", row, reason)`` with reason ``length``, ``stop``, ``cancelled`` or ``error`` (the
    loop failed: see :attr:`Batcher.error`).

    The loop hands over each step's events at once (:meth:`flush`) into an outbox that the
    consumer empties with :meth:`take` (or :meth:`wait`, which blocks). ``wake`` is called, from the
    loop's thread, only when the outbox goes from empty to not empty: a consumer that falls behind
    is woken once and then takes several steps together, so under load the loop does not pay a
    wake-up per row per step. :meth:`cancel` ends every row at the next step."""

    def __init__(
        self,
        prompt_ids: np.ndarray,
        opts: SampleOptions,
        wake: Callable[[], object] | None = None,
        logprobs: int | None = None,
    ):
        self.prompt_ids, self.opts, self.logprobs = prompt_ids, opts, logprobs
        self._pending: list[tuple] = []  # this step's events (the loop's thread only)
        self._outbox: list[tuple] = []  # handed over, not yet taken
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._wake = wake or self._ready.set
        self._on_cancel: Callable[[], None] | None = None  # set by the batcher: a cancel wakes its loop
        self.cancelled = False
        self.overflowed = False  # its consumer fell OUTBOX_LIMIT events a row behind: cancelled, events dropped

    def cancel(self) -> None:
        self.cancelled = True
        if self._on_cancel:
            self._on_cancel()

    def emit(self, event: tuple) -> None:
        self._pending.append(event)

    def flush(self) -> None:
        """Hand this step's events over; wake the consumer if it had taken everything."""
        if self._pending:
            events, self._pending = self._pending, []
            self.deliver(events)

    def deliver(self, events: list[tuple]) -> None:
        with self._lock:
            was_empty = not self._outbox
            if self.overflowed:  # nobody is reading: only the rows' ends are kept
                events = [e for e in events if e[0] == "end"]
            self._outbox.extend(events)
            overflow = not self.overflowed and len(self._outbox) > OUTBOX_LIMIT * self.opts.n
            if overflow:  # a stream whose client stopped reading: its memory stays bounded
                self.overflowed = True
                self._outbox = [e for e in self._outbox if e[0] == "end"]
        if overflow:
            self.cancel()
        if was_empty:
            self._wake()

    def take(self) -> list[tuple]:
        """The events handed over since the last take, oldest first (may be empty)."""
        with self._lock:
            events, self._outbox = self._outbox, []
            self._ready.clear()
        return events

    def wait(self, timeout: float | None = None) -> list[tuple]:
        """Block until there are events, then take them (for consumers without a ``wake``)."""
        while True:
            events = self.take()
            if events:
                return events
            if not self._ready.wait(timeout):
                raise TimeoutError("no events from the batcher in time")

    def iter_events(self, timeout: float | None = None) -> Iterator[tuple]:
        """Every event, one at a time, until each row has ended."""
        open_rows = self.opts.n
        while open_rows:
            for event in self.wait(timeout):
                open_rows -= event[0] == "end"
                yield event

    def texts(self, timeout: float | None = None) -> list[str]:
        """Wait for every row's end; the full texts (as ``Sampler.generate`` returns them)."""
        out = [""] * self.opts.n
        for kind, row, value in self.iter_events(timeout):
            if kind == "text":
                out[row] += value
        return out
