"""Continuous batching: many generations share every decoding step.

A :class:`Batcher` runs one loop (a thread) over the rows being generated. A
request is primed on its own (the model reads its prompt), joins the batch at
the next step, and leaves it as soon as it is done: its length is reached, a
stop string appears, or it is cancelled (a client that went away). Each step
draws the next character of every row with that row's own options, then
advances all rows in one batched fast step.

Draws come from the counter-based generator of ``generate/draws.py`` at (the
row's seed, the row's step), and ``pick`` treats rows independently, so a row's
text is the text :meth:`Sampler.generate` gives for the same prompt, options and
seed, whatever is decoded beside it; its pieces are what :meth:`Sampler.stream`
yields (text that may be the start of a stop string is held back).

The loop's parts: admission (:meth:`Batcher._admit`, priming, :meth:`Batcher._join`),
the step (:meth:`Batcher._step`: draws and log-probabilities), and delivery
(``rows.advance``: the text each row may show, and how it ends).
The same loop in a process of its own is ``process_batcher.py``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeAlias, cast

import numpy as np

from ..config import SampleOptions
from ..errors import ChargenError
from ..generate.draws import uniforms_at
from ..generate.prompt_cache import PromptCache
from ..generate.rules import History
from ..generate.sampler import Sampler
from .arrays import arrays_for
from .request import Request
from .rows import Row, advance, check_logprobs, done_before_start, end_all

log = logging.getLogger(__name__)
_NEUTRAL = SampleOptions()  # no rule: the history of a row that has none
INLINE_PRIME = 256  # prompts up to this many characters are read by the loop itself (a few ms), longer beside it
# A request ready to join: with its logits and state once its prompt is read, None and None before.
_Primed: TypeAlias = tuple[Request, Any, Any]  # logits (n, V) and the per-layer state, in the backend's arrays


class BatcherClosed(ChargenError):
    """The decoding loop has stopped (closed, or failed): nothing more can be submitted."""


class Batcher:
    """A decoding loop shared by concurrent requests (see the module docstring).

    ``max_batch`` caps the rows decoded together; requests beyond it wait
    their turn in order.
    """

    def __init__(
        self, sampler: Sampler, max_batch: int = 256, on_step: Callable[[], None] | None = None, prompt_cache: int = 256
    ):
        self.sampler, self.max_batch, self._on_step = sampler, max_batch, on_step
        # the state after prompts read before (generate/prompt_cache.py): a repeated prompt is not read again
        self.cache = PromptCache(sampler._prime, sampler.runtime.repeat, entries=prompt_cache)
        self.vocab, self.step_fn = sampler.vocab, sampler.runtime.step
        self._arrays = arrays_for(sampler.runtime)  # the backend's arrays (one copy each way per step on CUDA)
        # the unknown token, never drawn: made once on the device (as sample_ids does)
        unk = sampler.vocab.unk_id
        self._banned = self._arrays.banned(unk)
        self._waiting: list[Request] = []  # submitted, not primed yet
        self._priming: Request | None = None  # being primed now
        self._primed: list[_Primed] = []  # (request, logits, state): primed, waiting for room
        self._rows: list[Row] = []
        self._logits: Any = None  # (rows, V), the backend's array
        self._state: Any = None  # the per-layer state of the rows
        self._history: History | None = None  # the rules' record of every row, while some row has rules
        self._ops = sampler.runtime.ops
        self._cv = threading.Condition()
        self._closed = False
        self._sweep = False  # a request was cancelled: look for those waiting
        self.error: str | None = None  # why the loop failed, if it did
        # A long prompt is read by a thread beside the loop: it does not hold up the rows decoding. A short
        # one is read by the loop as it joins (priming 64 requests at once in the loop, not in a second
        # thread competing with it, kept 64 clients at 13,500 chars/s instead of 10,400).
        self._primer = threading.Thread(target=self._prime_loop, name="chargen-primer", daemon=True)
        self._thread = threading.Thread(target=self._loop, name="chargen-batcher", daemon=True)
        self._primer.start()
        self._thread.start()

    # -- the caller's side -------------------------------------------------

    def submit(
        self,
        prompt: str,
        options: SampleOptions | None = None,
        wake: Callable[[], object] | None = None,
        logprobs: int | None = None,
        **settings: Any,
    ) -> Request:
        """Check and queue a generation; returns its :class:`Request` at once (``wake``: see Request).
        ``logprobs``: also report each character's log-probability and the ``logprobs`` likeliest ones."""
        opts = self.sampler._options(prompt, options, settings)
        return self.submit_ids(Request(self.sampler.encode(prompt, opts.unknown), opts, wake, check_logprobs(logprobs)))

    def submit_ids(self, request: Request) -> Request:
        """Queue a request whose prompt is already encoded and whose options are checked (seed set)."""
        with self._cv:
            if self._closed:
                raise BatcherClosed(f"the decoding loop has stopped{self.failure}")
            request._on_cancel = self._poke
            if len(request.prompt_ids) <= INLINE_PRIME:  # read by the loop as it joins: a few milliseconds
                self._primed.append((request, None, None))
            else:
                self._waiting.append(request)
            self._cv.notify_all()
        return request

    @property
    def failure(self) -> str:
        """Why the loop failed (as ``: message``), or empty."""
        return f": {self.error}" if self.error else ""

    def generate(self, prompt: str = "", options: SampleOptions | None = None, **settings: Any) -> str | list[str]:
        """What ``Sampler.generate`` returns, decoded in the shared batch."""
        request = self.submit(prompt, options, **settings)
        texts = request.texts()
        return texts[0] if request.opts.n == 1 else texts

    @property
    def active(self) -> int:
        """Rows being decoded now, plus rows of requests waiting to join."""
        with self._cv:
            priming = [self._priming] if self._priming is not None else []
            waiting = self._waiting + [item[0] for item in self._primed] + priming
            return len(self._rows) + sum(r.opts.n for r in waiting)

    def stats(self) -> dict[str, int]:
        """Rows decoding now and rows waiting to join; prompts found in the cache and prompts read."""
        decoding = len(self._rows)
        return dict(decoding=decoding, waiting=self.active - decoding, hits=self.cache.hits, misses=self.cache.misses)

    def close(self) -> None:
        """Stop the loop; rows still open end as cancelled."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join()

    # -- the loop ----------------------------------------------------------

    def _loop(self) -> None:
        """Admit what is ready, take a step of every row and hand its events over; until closed or failed."""
        try:
            with self._arrays.inference():  # torch's inference mode (this thread's), or nothing
                while (admitted := self._admit()) is not None:
                    gone, joining = admitted
                    for request in gone:
                        end_all(request, "cancelled" if request.cancelled else "length")
                    for item in joining:
                        self._join(*item)
                    if self._rows:
                        self._step()
                    if self._on_step:
                        self._on_step()
        except Exception as e:  # every open row must end, whatever went wrong
            self._fail(e)
        self._finish()

    def _poke(self) -> None:
        with self._cv:
            self._sweep = True
            self._cv.notify_all()

    def _fail(self, e: Exception) -> None:
        with self._cv:
            if self.error is None:
                self.error = f"{type(e).__name__}: {e}"
                log.error("chargen: the decoding loop failed (%s); open requests end with an error", self.error)
            self._closed = True
            self._cv.notify_all()

    def _finish(self) -> None:
        """The loop has stopped: every row still open, decoding or waiting, ends (``error`` if it failed)."""
        self._primer.join()  # it stops after the prompt it is reading
        reason = "error" if self.error else "cancelled"
        with self._cv:
            waiting = self._waiting + [item[0] for item in self._primed]
            self._waiting, self._primed = [], []
        for row in self._rows:
            row.request.emit(("end", row.index, reason))
        for request in {id(r): r for r in [row.request for row in self._rows]}.values():
            request.flush()
        for request in waiting:
            end_all(request, reason)
        self._rows = []
        if self._on_step:
            self._on_step()

    # -- admission -----------------------------------------------------------

    def _prime_loop(self) -> None:
        """Read each submitted prompt (one ``nn.LSTM``/``nn.GRU`` call, as ``Sampler.generate`` does) and
        hand the state to the loop."""
        try:
            while True:
                with self._cv:
                    while not self._closed and not self._waiting:
                        self._cv.wait()
                    if self._closed:
                        return
                    request = self._priming = self._waiting.pop(0)
                if done_before_start(request):
                    item = (request, None, None)
                else:
                    logits, state = self.cache.prime(request.prompt_ids, request.opts.n)
                    item = (request, logits, state)
                with self._cv:
                    self._primed.append(item)
                    self._priming = None
                    self._cv.notify_all()
        except Exception as e:  # the loop ends every row with it
            self._fail(e)

    def _admit(self) -> tuple[list[Request], list[_Primed]] | None:
        """Wait for work; then the requests that leave before they start (cancelled, or asking for nothing)
        and the primed ones that join now, in order while there is room (one at least when none decode).
        None once the loop is closed."""
        with self._cv:
            while not self._closed and not self._primed and not self._rows and not self._sweep:
                self._cv.wait()
            if self._closed:
                return None
            # requests cancelled while they waited leave now, not when they would have joined
            gone = [item[0] for item in self._primed if done_before_start(item[0])]
            self._primed = [item for item in self._primed if not done_before_start(item[0])]
            if self._sweep:
                gone += [r for r in self._waiting if r.cancelled]
                self._waiting = [r for r in self._waiting if not r.cancelled]
                self._sweep = False
            joining: list[_Primed] = []
            room = self.max_batch - len(self._rows)
            while self._primed and (self._primed[0][0].opts.n <= room or not (self._rows or joining)):
                joining.append(self._primed.pop(0))
                room -= joining[-1][0].opts.n
            return gone, joining

    def _join(self, request: Request, logits: Any, state: Any) -> None:
        opts = request.opts
        if logits is None:  # a short prompt: read here
            logits, state = self.cache.prime(request.prompt_ids, opts.n)
        assert opts.seed is not None and state is not None  # a checked request has its seed; a read one, its state
        rows = [Row(request, i, (opts.seed + i) % (1 << 64)) for i in range(opts.n)]
        self._join_history(request)
        if self._rows:
            assert self._logits is not None and self._state is not None  # rows decoding have them
            cat = self._arrays.cat
            self._logits = cat(self._logits, logits)
            self._state = [[cat(a, b) for a, b in zip(old, new)] for old, new in zip(self._state, state)]
        else:
            self._logits, self._state = logits, state
        self._rows.extend(rows)

    def _join_history(self, request: Request) -> None:
        """The rules' history of the joining rows (``generate/rules.py``), beside the others' (rows without
        rules get neutral ones: they change nothing). None while no row has a rule."""
        opts, n = request.opts, request.opts.n
        if not opts.rules and self._history is None:
            return
        V = len(self.vocab)
        mine = self.sampler._history(opts, request.prompt_ids, n) if opts.rules else None
        if self._history is None:
            self._history = History.start(self._ops, _NEUTRAL, None, [], V, len(self._rows))
        self._history = self._history.join(mine or History.start(self._ops, _NEUTRAL, None, [], V, n))

    # -- the step --------------------------------------------------------------

    def _step(self) -> None:
        """Draw every row's next character, deliver what each may show, drop the rows that ended and
        advance the others in one batched step."""
        rows, logits, chars = self._rows, self._logits, self.vocab.chars
        assert logits is not None and self._state is not None  # set while rows decode
        history = self._history
        ids = self._draw(rows, logits if history is None else history.adjust(logits))
        if history is not None:
            history.update(ids)
        members = [i for i, row in enumerate(rows) if row.request.logprobs is not None]
        next_ids, entries = self._read(logits, ids, members)
        keep = [
            i for i, (row, next_id) in enumerate(zip(rows, next_ids)) if advance(row, chars[next_id], entries.get(i))
        ]
        for request in {id(r.request): r.request for r in rows}.values():
            request.flush()
        if not keep:
            self._rows, self._logits, self._state, self._history = [], None, None, None
            return
        if len(keep) < len(rows):
            take = self._arrays.rows
            ids = take(ids, keep)
            self._state = [[take(h, keep) for h in layer] for layer in self._state]
            self._rows = [rows[i] for i in keep]
            ruled = any(row.request.opts.rules for row in self._rows)
            self._history = history.select(self._ops.put(np.array(keep))) if history and ruled else None
        self._logits, self._state = self.step_fn(ids, self._state)

    def _draw(self, rows: list[Row], logits: Any) -> Any:
        """Each row's next id, drawn with its own options at (its seed, its step)."""
        u = self._arrays.put(
            uniforms_at(
                np.array([r.seed for r in rows], dtype=np.uint64), np.array([r.t for r in rows], dtype=np.uint64)
            )
        )
        pick, groups = self._arrays.pick, cast(dict[tuple, list[int]], {})
        for i, row in enumerate(rows):
            o = row.request.opts
            groups.setdefault((o.temperature, o.top_k, o.top_p, o.min_p, o.greedy), []).append(i)
        if len(groups) == 1:  # all rows draw alike (the common case): no gathering
            ((temperature, top_k, top_p, min_p, greedy),) = groups
            return pick(logits, None if greedy else u, temperature, top_k, top_p, self._banned, min_p)
        ids = self._arrays.ids(len(rows))
        take = self._arrays.rows
        for (temperature, top_k, top_p, min_p, greedy), members in groups.items():
            ids[self._arrays.put(np.asarray(members))] = pick(
                take(logits, members),
                None if greedy else take(u, members),
                temperature,
                top_k,
                top_p,
                self._banned,
                min_p,
            )
        return ids

    def _read(self, logits: Any, ids: Any, members: list[int]) -> tuple[list[int], dict[int, tuple]]:
        """The drawn ids on the host and, for rows asking for them, (log-probability of the drawn character,
        its request's ``logprobs`` likeliest characters with theirs) under the model's own distribution (no
        temperature, no cut): all of it in one copy from the device (float64 holds the ids exactly)."""
        if not members:
            return self._arrays.read(ids).tolist(), {}
        rows, chars = self._rows, self.vocab.chars
        k = min(max(cast(int, rows[i].request.logprobs) for i in members), len(chars))  # members asked: an int
        packed = self._arrays.logprobs(logits, ids, members, k)
        n, m = len(ids), len(members)
        next_ids, drawn_v = packed[:n].astype(np.int64).tolist(), packed[n : n + m].tolist()
        top_v = packed[n + m : n + m + m * k].reshape(m, k).tolist()
        top_i = packed[n + m + m * k :].astype(np.int64).reshape(m, k).tolist()
        out = {}
        for j, i in enumerate(members):
            want = rows[i].request.logprobs
            out[i] = (drawn_v[j], [(chars[c], v) for c, v in zip(top_i[j][:want], top_v[j][:want])])
        return next_ids, out
