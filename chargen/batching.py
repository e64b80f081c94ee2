"""Continuous batching: many generations share every decoding step.

A :class:`Batcher` runs one loop (a thread) over the rows being generated. A
request is primed on its own (the model reads its prompt), joins the batch at
the next step, and leaves it as soon as it is done: its length is reached, a
stop string appears, or it is cancelled (a client that went away). Each step
draws the next character of every row with that row's own options, then
advances all rows in one batched fast step.

Draws come from the counter-based generator of ``decode.py`` at (the row's
seed, the row's step), and ``pick`` treats rows independently, so a row's text
is the text :meth:`Sampler.generate` gives for the same prompt, options and
seed, whatever is decoded beside it; its pieces are what :meth:`Sampler.stream`
yields (text that may be the start of a stop string is held back).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from .config import SampleOptions
from .decode import pick, uniforms_at
from .errors import ChargenError
from .sample import Sampler, _cut_at_stop, _partial_stop_suffix


class Request:
    """One submitted generation of ``n`` rows. Its events are ``("text", row, piece)`` and, once per
    row, ``("end", row, reason)`` with reason ``length``, ``stop`` or ``cancelled``.

    The loop hands over each step's events at once (:meth:`flush`) into an outbox that the
    consumer empties with :meth:`take` (or :meth:`wait`, which blocks). ``wake`` is called, from the
    loop's thread, only when the outbox goes from empty to not empty: a consumer that falls behind
    is woken once and then takes several steps together, so under load the loop does not pay a
    wake-up per row per step. :meth:`cancel` ends every row at the next step."""

    def __init__(self, prompt_ids: np.ndarray, opts: SampleOptions, wake=None):
        self.prompt_ids, self.opts = prompt_ids, opts
        self._pending: list[tuple] = []     # this step's events (the loop's thread only)
        self._outbox: list[tuple] = []      # handed over, not yet taken
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._wake = wake or self._ready.set
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def emit(self, event: tuple) -> None:
        self._pending.append(event)

    def flush(self) -> None:
        """Hand this step's events over; wake the consumer if it had taken everything."""
        if self._pending:
            with self._lock:
                was_empty = not self._outbox
                self._outbox.extend(self._pending)
            self._pending = []
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

    def iter_events(self, timeout: float | None = None):
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


@dataclass
class _Row:
    request: Request
    index: int          # which of the request's n rows
    seed: int
    t: int = 0          # characters drawn so far
    pending: str = ""   # text held back: it may be the start of a stop string


class Batcher:
    """A decoding loop shared by concurrent requests (see the module docstring).

    ``max_batch`` caps the rows decoded together; requests beyond it wait
    their turn in order.
    """

    def __init__(self, sampler: Sampler, max_batch: int = 256):
        self.sampler, self.max_batch = sampler, max_batch
        self.vocab, self.step_fn = sampler.vocab, sampler.fast_step
        # the unknown token, never drawn: made once on the device (as sample_ids does)
        unk = sampler.vocab.unk_id
        self._banned = None if unk is None else torch.tensor([unk], device=sampler.device)
        self._waiting: list[Request] = []
        self._rows: list[_Row] = []
        self._logits: torch.Tensor | None = None
        self._state: list | None = None
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="chargen-batcher", daemon=True)
        self._thread.start()

    # -- the caller's side -------------------------------------------------

    def submit(self, prompt: str, options: SampleOptions | None = None, wake=None, **settings) -> Request:
        """Check and queue a generation; returns its :class:`Request` at once (``wake``: see Request)."""
        opts = self.sampler._options(prompt, options, settings)
        request = Request(self.sampler.encode(prompt, opts.unknown), opts, wake)
        with self._cv:
            if self._closed:
                raise ChargenError("the batcher is closed")
            self._waiting.append(request)
            self._cv.notify()
        return request

    def generate(self, prompt: str = "", options: SampleOptions | None = None, **settings) -> str | list[str]:
        """What ``Sampler.generate`` returns, decoded in the shared batch."""
        request = self.submit(prompt, options, **settings)
        texts = request.texts()
        return texts[0] if request.opts.n == 1 else texts

    @property
    def active(self) -> int:
        """Rows being decoded now, plus rows of requests waiting to join."""
        with self._cv:
            return len(self._rows) + sum(r.opts.n for r in self._waiting)

    def close(self) -> None:
        """Stop the loop; rows still open end as cancelled."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join()

    # -- the loop ----------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._closed and not self._waiting and not self._rows:
                    self._cv.wait()
                if self._closed:
                    break
                joining, room = [], self.max_batch - len(self._rows)
                while self._waiting and (self._waiting[0].opts.n <= room or not (self._rows or joining)):
                    joining.append(self._waiting.pop(0))
                    room -= joining[-1].opts.n
            for request in joining:
                self._join(request)
            if self._rows:
                self._step()
        for row in self._rows:
            row.request.emit(("end", row.index, "cancelled"))
            row.request.flush()
        for request in self._waiting:
            for i in range(request.opts.n):
                request.emit(("end", i, "cancelled"))
            request.flush()

    @torch.inference_mode()
    def _join(self, request: Request) -> None:
        opts = request.opts
        if request.cancelled or opts.length == 0:
            for i in range(opts.n):
                request.emit(("end", i, "cancelled" if request.cancelled else "length"))
            request.flush()
            return
        logits, state = self.sampler._prime(request.prompt_ids, opts.n)
        state = self.step_fn.to_fast(state)
        rows = [_Row(request, i, (opts.seed + i) % (1 << 64)) for i in range(opts.n)]
        if self._rows:
            self._logits = torch.cat([self._logits, logits])
            self._state = [[torch.cat([a, b]) for a, b in zip(old, new)] for old, new in zip(self._state, state)]
        else:
            self._logits, self._state = logits, state
        self._rows.extend(rows)

    @torch.inference_mode()
    def _step(self) -> None:
        rows, logits = self._rows, self._logits
        u = torch.from_numpy(uniforms_at(np.array([r.seed for r in rows], dtype=np.uint64),
                                         np.array([r.t for r in rows], dtype=np.uint64))).to(logits.device)
        groups: dict[tuple, list[int]] = {}
        for i, row in enumerate(rows):
            o = row.request.opts
            groups.setdefault((o.temperature, o.top_k, o.top_p), []).append(i)
        if len(groups) == 1:  # all rows draw alike (the common case): no gathering
            (temperature, top_k, top_p), = groups
            greedy = temperature == 0 or top_k == 1
            ids = pick(logits, None if greedy else u, temperature, top_k, top_p, self._banned)
        else:
            ids = torch.empty(len(rows), dtype=torch.long, device=logits.device)
            for (temperature, top_k, top_p), members in groups.items():
                index = torch.tensor(members, device=logits.device)
                greedy = temperature == 0 or top_k == 1
                ids[index] = pick(logits.index_select(0, index), None if greedy else u.index_select(0, index),
                                  temperature, top_k, top_p, self._banned)
        keep = [i for i, (row, next_id) in enumerate(zip(rows, ids.tolist())) if self._advance(row, next_id)]
        for request in {id(r.request): r.request for r in rows}.values():
            request.flush()
        if not keep:
            self._rows, self._logits, self._state = [], None, None
            return
        if len(keep) < len(rows):
            index = torch.tensor(keep, device=logits.device)
            ids = ids.index_select(0, index)
            self._state = [[h.index_select(0, index) for h in layer] for layer in self._state]
            self._rows = [rows[i] for i in keep]
        self._logits, self._state = self.step_fn(ids, self._state)

    def _advance(self, row: _Row, next_id: int) -> bool:
        """Take the row's next character; emit what can be shown; whether the row goes on."""
        request, opts = row.request, row.request.opts
        if request.cancelled:
            return self._end(row, "cancelled")
        row.t += 1
        pending = row.pending + self.vocab.chars[next_id]
        stops = opts.stop
        if stops:
            hit = _cut_at_stop(pending, stops)
            if hit != pending:
                if hit:
                    request.emit(("text", row.index, hit))
                return self._end(row, "stop")
            keep = _partial_stop_suffix(pending, stops)
        else:
            keep = 0
        if len(pending) > keep:
            request.emit(("text", row.index, pending[: len(pending) - keep]))
            pending = pending[len(pending) - keep:]
        row.pending = pending
        if row.t >= opts.length:
            if pending:
                request.emit(("text", row.index, pending))
            return self._end(row, "length")
        return True

    @staticmethod
    def _end(row: _Row, reason: str) -> bool:
        row.request.emit(("end", row.index, reason))
        return False
