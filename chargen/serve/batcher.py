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

import functools
import logging
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import SampleOptions
from ..generate.torch_step import pick, uniforms_at
from ..errors import ChargenError
from ..generate.sampler import Sampler, _cut_at_stop, _partial_stop_suffix


log = logging.getLogger("chargen.serve.batcher")


class BatcherClosed(ChargenError):
    """The decoding loop has stopped (closed, or failed): nothing more can be submitted."""


class Request:
    """One submitted generation of ``n`` rows. Its events are ``("text", row, piece)`` and, once per
    row, ``("end", row, reason)`` with reason ``length``, ``stop``, ``cancelled`` or ``error`` (the
    loop failed: see :attr:`Batcher.error`).

    The loop hands over each step's events at once (:meth:`flush`) into an outbox that the
    consumer empties with :meth:`take` (or :meth:`wait`, which blocks). ``wake`` is called, from the
    loop's thread, only when the outbox goes from empty to not empty: a consumer that falls behind
    is woken once and then takes several steps together, so under load the loop does not pay a
    wake-up per row per step. :meth:`cancel` ends every row at the next step."""

    def __init__(self, prompt_ids: np.ndarray, opts: SampleOptions, wake=None, logprobs: int | None = None):
        self.prompt_ids, self.opts, self.logprobs = prompt_ids, opts, logprobs
        self._pending: list[tuple] = []     # this step's events (the loop's thread only)
        self._outbox: list[tuple] = []      # handed over, not yet taken
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._wake = wake or self._ready.set
        self._on_cancel = None          # set by the batcher: a cancel wakes its loop
        self.cancelled = False

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
            self._outbox.extend(events)
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


def _logprobs(k) -> int | None:
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
        raise ChargenError(f"logprobs must be a whole number >= 0 (how many likeliest characters), got {k!r}")
    return k


INLINE_PRIME = 256   # prompts up to this many characters are read by the loop itself (a few ms), longer beside it


def _done_before_start(request: Request) -> bool:
    return request.cancelled or request.opts.length == 0


@dataclass
class _Row:
    request: Request
    index: int          # which of the request's n rows
    seed: int
    t: int = 0          # characters drawn so far
    pending: str = ""   # text held back: it may be the start of a stop string
    entries: list = field(default_factory=list)   # log-probabilities of the pending characters, if asked


class Batcher:
    """A decoding loop shared by concurrent requests (see the module docstring).

    ``max_batch`` caps the rows decoded together; requests beyond it wait
    their turn in order.
    """

    def __init__(self, sampler: Sampler, max_batch: int = 256, on_step=None):
        self.sampler, self.max_batch, self._on_step = sampler, max_batch, on_step
        if sampler.backend != "torch":
            raise ChargenError("the batcher runs on the torch backend; load the sampler with backend='torch'")
        self.vocab, self.step_fn = sampler.vocab, sampler.runtime.step
        # the unknown token, never drawn: made once on the device (as sample_ids does)
        unk = sampler.vocab.unk_id
        self._banned = None if unk is None else torch.tensor([unk], device=sampler.device)
        self._waiting: list[Request] = []       # submitted, not primed yet
        self._priming: Request | None = None    # being primed now
        self._primed: list[tuple] = []          # (request, logits, state): primed, waiting for room
        self._rows: list[_Row] = []
        self._logits: torch.Tensor | None = None
        self._state: list | None = None
        self._cv = threading.Condition()
        self._closed = False
        self._sweep = False               # a request was cancelled: look for those waiting
        self.error: str | None = None     # why the loop failed, if it did
        # A long prompt is read by a thread beside the loop: it does not hold up the rows decoding. A short
        # one is read by the loop as it joins (priming 64 requests at once in the loop, not in a second
        # thread competing with it, kept 64 clients at 13,500 chars/s instead of 10,400).
        self._primer = threading.Thread(target=self._prime_loop, name="chargen-primer", daemon=True)
        self._thread = threading.Thread(target=self._loop, name="chargen-batcher", daemon=True)
        self._primer.start()
        self._thread.start()

    # -- the caller's side -------------------------------------------------

    def submit(self, prompt: str, options: SampleOptions | None = None, wake=None, logprobs: int | None = None,
               **settings) -> Request:
        """Check and queue a generation; returns its :class:`Request` at once (``wake``: see Request).
        ``logprobs``: also report each character's log-probability and the ``logprobs`` likeliest ones."""
        opts = self.sampler._options(prompt, options, settings)
        return self.submit_ids(Request(self.sampler.encode(prompt, opts.unknown), opts, wake, _logprobs(logprobs)))

    def submit_ids(self, request: Request) -> Request:
        """Queue a request whose prompt is already encoded and whose options are checked (seed set)."""
        with self._cv:
            if self._closed:
                raise BatcherClosed(f"the decoding loop has stopped{self.failure}")
            request._on_cancel = self._poke
            if len(request.prompt_ids) <= INLINE_PRIME:   # read by the loop as it joins: a few milliseconds
                self._primed.append((request, None, None))
            else:
                self._waiting.append(request)
            self._cv.notify_all()
        return request

    @property
    def failure(self) -> str:
        """Why the loop failed (as ``: message``), or empty."""
        return f": {self.error}" if self.error else ""

    def generate(self, prompt: str = "", options: SampleOptions | None = None, **settings) -> str | list[str]:
        """What ``Sampler.generate`` returns, decoded in the shared batch."""
        request = self.submit(prompt, options, **settings)
        texts = request.texts()
        return texts[0] if request.opts.n == 1 else texts

    @property
    def active(self) -> int:
        """Rows being decoded now, plus rows of requests waiting to join."""
        with self._cv:
            waiting = self._waiting + [item[0] for item in self._primed] + [self._priming] * (self._priming is not None)
            return len(self._rows) + sum(r.opts.n for r in waiting)

    def close(self) -> None:
        """Stop the loop; rows still open end as cancelled."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join()

    # -- the loop ----------------------------------------------------------

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
                if _done_before_start(request):
                    item = (request, None, None)
                else:
                    logits, state = self.sampler._prime(request.prompt_ids, request.opts.n)
                    item = (request, logits, state)
                with self._cv:
                    self._primed.append(item)
                    self._priming = None
                    self._cv.notify_all()
        except Exception as e:  # noqa: BLE001 - the loop ends every row with it
            self._fail(e)

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

    def _loop(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._closed and not self._primed and not self._rows and not self._sweep:
                        self._cv.wait()
                    if self._closed:
                        break
                    # requests cancelled while they waited leave now, not when they would have joined
                    gone = [item[0] for item in self._primed if _done_before_start(item[0])]
                    self._primed = [item for item in self._primed if not _done_before_start(item[0])]
                    if self._sweep:
                        gone += [r for r in self._waiting if r.cancelled]
                        self._waiting = [r for r in self._waiting if not r.cancelled]
                        self._sweep = False
                    joining, room = [], self.max_batch - len(self._rows)
                    while self._primed and (self._primed[0][0].opts.n <= room or not (self._rows or joining)):
                        joining.append(self._primed.pop(0))
                        room -= joining[-1][0].opts.n
                for request in gone:
                    self._end_all(request, "cancelled" if request.cancelled else "length")
                for item in joining:
                    self._join(*item)
                if self._rows:
                    self._step()
                if self._on_step:
                    self._on_step()
        except Exception as e:  # noqa: BLE001 - every open row must end, whatever went wrong
            self._fail(e)
        self._primer.join()   # it stops after the prompt it is reading
        reason = "error" if self.error else "cancelled"
        with self._cv:
            waiting = self._waiting + [item[0] for item in self._primed]
            self._waiting, self._primed = [], []
        for row in self._rows:
            row.request.emit(("end", row.index, reason))
        for request in {id(r): r for r in [row.request for row in self._rows]}.values():
            request.flush()
        for request in waiting:
            self._end_all(request, reason)
        self._rows = []
        if self._on_step:
            self._on_step()

    @staticmethod
    def _end_all(request: Request, reason: str) -> None:
        for i in range(request.opts.n):
            request.emit(("end", i, reason))
        request.flush()

    @torch.inference_mode()
    def _join(self, request: Request, logits: torch.Tensor | None, state: list | None) -> None:
        opts = request.opts
        if logits is None:   # a short prompt: read here
            logits, state = self.sampler._prime(request.prompt_ids, opts.n)
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
        members = [i for i, row in enumerate(rows) if row.request.logprobs is not None]
        entries = self._logprobs(logits, ids, members) if members else {}
        keep = [i for i, (row, next_id) in enumerate(zip(rows, ids.tolist()))
                if self._advance(row, next_id, entries.get(i))]
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

    def _logprobs(self, logits: torch.Tensor, ids: torch.Tensor, members: list[int]) -> dict[int, tuple]:
        """For rows asking for them: (log-probability of the drawn character, its request's ``logprobs``
        likeliest characters with theirs), under the model's own distribution (no temperature, no cut)."""
        rows, chars = self._rows, self.vocab.chars
        index = torch.tensor(members, device=logits.device)
        lp = torch.log_softmax(logits.index_select(0, index).float(), dim=-1)
        drawn = lp.gather(1, ids.index_select(0, index)[:, None])[:, 0].tolist()
        k = min(max(rows[i].request.logprobs for i in members), lp.shape[-1])
        top_v, top_i = lp.topk(k, dim=-1) if k else (lp[:, :0], lp[:, :0].long())
        top_v, top_i = top_v.tolist(), top_i.tolist()
        out = {}
        for j, i in enumerate(members):
            m = rows[i].request.logprobs
            out[i] = (drawn[j], [(chars[c], v) for c, v in zip(top_i[j][:m], top_v[j][:m])])
        return out

    def _advance(self, row: _Row, next_id: int, entry: tuple | None = None) -> bool:
        """Take the row's next character (and its log-probabilities, if asked for); emit what can be shown;
        whether the row goes on. A ``("logprobs", row, entries)`` event follows each text event of a row
        that asked, one entry per character."""
        request, opts = row.request, row.request.opts
        if request.cancelled:
            return self._end(row, "cancelled")
        row.t += 1
        pending = row.pending + self.vocab.chars[next_id]
        if entry is not None:
            row.entries.append(entry)

        def show(text: str) -> None:
            request.emit(("text", row.index, text))
            if entry is not None:
                request.emit(("logprobs", row.index, row.entries[:len(text)]))
                del row.entries[:len(text)]
        stops = opts.stop
        if stops:
            hit = _cut_at_stop(pending, stops)
            if hit != pending:
                if hit:
                    show(hit)
                return self._end(row, "stop")
            keep = _partial_stop_suffix(pending, stops)
        else:
            keep = 0
        if len(pending) > keep:
            show(pending[: len(pending) - keep])
            pending = pending[len(pending) - keep:]
        row.pending = pending
        if row.t >= opts.length:
            if pending:
                show(pending)
            return self._end(row, "length")
        return True

    @staticmethod
    def _end(row: _Row, reason: str) -> bool:
        row.request.emit(("end", row.index, reason))
        return False


class ProcessBatcher:
    """A :class:`Batcher` whose loop runs in a process of its own, with the same caller's side
    (``submit``, ``generate``, ``active``, ``close``) and the same texts.

    In a server, a loop thread shares the interpreter lock with the event loop: each torch call of a
    step lets go of the lock and must win it back from a busy server, and a 64-row step went from
    1.6 ms to about 10 ms under 64 streaming clients. In its own process the loop keeps its pace.
    Prompts are encoded and options checked here (errors come at once); the decoding process gets
    the ids and options, and sends back each step's events in one message.

    With an asyncio ``loop``, those messages are read in that loop (and requests' ``wake`` is called
    there); without one, by a thread. ``threads``: torch's threads in the decoding process; by default
    one fewer than the CPUs (at least one), leaving a core to the server: when the decoding threads
    have to share their cores, each parallel step waits for its slowest thread (measured on 2 cores
    under 64 clients: 2 threads took 7x the CPU time of 1 and a quarter of its throughput).
    """

    def __init__(self, sampler: Sampler, max_batch: int = 256, *, loop=None, threads: int | None = None,
                 start_timeout: float = 300.0):
        import multiprocessing
        ctx = multiprocessing.get_context("spawn")   # fork is unsafe with torch's threads
        self.sampler = sampler
        commands, self._commands = ctx.Pipe(duplex=False)
        self._events, events = ctx.Pipe(duplex=False)
        self._process = ctx.Process(target=_decoding_process, args=(commands, events, sampler, max_batch, threads),
                                    name="chargen-decoder", daemon=True)
        self._process.start()
        commands.close()
        events.close()
        self._lock = threading.Lock()            # the command pipe, the table and the counts
        self._requests: dict[int, Request] = {}
        self._next_id = 0
        self._open_rows = 0
        self.error: str | None = None
        if not self._events.poll(start_timeout):
            self._process.kill()
            raise ChargenError("the decoding process did not start")
        try:
            ready = self._events.recv()
        except EOFError:
            ready = "it exited"
        if ready != "ready":
            self._process.join(5)
            raise ChargenError(f"the decoding process could not start: {ready}")
        self._loop = loop
        if loop is None:
            self._reader = threading.Thread(target=self._read, name="chargen-decoder-events", daemon=True)
            self._reader.start()
        else:
            self._closed = threading.Event()
            loop.add_reader(self._events.fileno(), self._read_ready)

    def submit(self, prompt: str, options: SampleOptions | None = None, wake=None, logprobs: int | None = None,
               **settings) -> Request:
        """Check and queue a generation; returns its :class:`Request` at once (see :meth:`Batcher.submit`)."""
        opts = self.sampler._options(prompt, options, settings)
        request = _RemoteRequest(self.sampler.encode(prompt, opts.unknown), opts, wake, self, _logprobs(logprobs))
        with self._lock:
            if self.error is not None:
                raise BatcherClosed(f"the decoding loop has stopped: {self.error}")
            request.rid, self._next_id = self._next_id, self._next_id + 1
            self._requests[request.rid] = request
            try:
                self._commands.send(("submit", request.rid, request.prompt_ids, opts, request.logprobs))
            except OSError:
                del self._requests[request.rid]
                raise BatcherClosed("the decoding loop has stopped: the decoding process exited") from None
            self._open_rows += opts.n
        return request

    generate = Batcher.generate

    @property
    def active(self) -> int:
        """Rows being decoded now, plus rows of requests waiting to join."""
        return self._open_rows

    def _cancel(self, request: "_RemoteRequest") -> None:
        with self._lock:
            if request.rid in self._requests and self.error is None:
                try:
                    self._commands.send(("cancel", request.rid))
                except OSError:
                    pass   # the process has gone: the reader ends the request

    def close(self) -> None:
        """Stop the decoding process; rows still open end as cancelled."""
        with self._lock:
            if self.error is None:
                self.error = "it was closed"
            try:
                self._commands.send(("close",))
                self._commands.close()
            except OSError:
                pass   # closed already, or the process has gone
        if self._loop is None:
            self._reader.join(60)
        elif not self._closed.is_set():   # the event loop is busy closing us: read the last messages here
            self._loop.remove_reader(self._events.fileno())
            deadline = time.monotonic() + 60
            while self._events.poll(max(0.0, deadline - time.monotonic())) and self._receive():
                pass
            self._orphans()
            self._closed.set()
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()

    def _read(self) -> None:
        """Deliver each step's events to their requests, until the decoding process ends (a thread)."""
        while self._receive():
            pass
        self._orphans()

    def _read_ready(self) -> None:
        """The event loop's reader: everything that has arrived."""
        while self._events.poll():
            if not self._receive():
                self._loop.remove_reader(self._events.fileno())
                self._orphans()
                self._closed.set()
                return

    def _receive(self) -> bool:
        """Take one message; False once the decoding process has gone."""
        try:
            message = self._events.recv()
        except (EOFError, OSError):
            return False
        if isinstance(message, str):   # the loop failed
            with self._lock:
                self.error = message
            return True
        for rid, events in message:
            request = self._requests.get(rid)
            if request is None:
                continue
            ended = sum(kind == "end" for kind, _, _ in events)
            with self._lock:
                self._open_rows -= ended
                request.open_rows -= ended
                if not request.open_rows:
                    del self._requests[rid]
            request.deliver(events)
        return True

    def _orphans(self) -> None:
        """The process is gone: whatever is still open ends here."""
        with self._lock:
            if self.error is None:
                self.error = "the decoding process exited"
                self._process.join(1)
                log.error("chargen: the decoding process exited (%s); open requests end with an error",
                          _exit_status(self._process.exitcode))
            orphans, self._requests, self._open_rows = self._requests, {}, 0
        reason = "cancelled" if self.error == "it was closed" else "error"
        for request in orphans.values():
            request.deliver([("end", i, reason) for i in range(request.opts.n)])


def _exit_status(code: int | None) -> str:
    if code is None:
        return "still running"
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


class _RemoteRequest(Request):
    def __init__(self, prompt_ids, opts, wake, owner: ProcessBatcher, logprobs: int | None):
        super().__init__(prompt_ids, opts, wake, logprobs)
        self.owner, self.rid, self.open_rows = owner, -1, opts.n

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.owner._cancel(self)


def _decoding_process(commands, events, sampler: Sampler, max_batch: int, threads: int | None) -> None:
    """The decoding process: a Batcher fed from ``commands``; each step's events go out in one message."""
    import signal
    # Ctrl-C, SIGTERM and SIGHUP are the server's to handle (sent to the whole process group, they reach us
    # too): it closes us after its grace period. Should the server die, our command pipe ends and so do we.
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    torch.set_num_threads(threads or max(1, min(torch.get_num_threads(), (os.cpu_count() or 2) - 1)))
    requests: dict[int, Request] = {}
    ready: list[Request] = []                       # requests with events this step (the loop's thread)

    def ship() -> None:
        if batcher.error:   # first: the parent knows why before it sees the rows end
            events.send(batcher.error)
        if ready:
            message = []
            for request in ready:
                taken = request.take()
                message.append((request.rid, taken))
                request.open_rows -= sum(kind == "end" for kind, _, _ in taken)
                if not request.open_rows:
                    requests.pop(request.rid, None)
            ready.clear()
            events.send(message)

    try:
        batcher = Batcher(sampler, max_batch, on_step=ship)
    except Exception as e:  # noqa: BLE001 - said to the parent, which raises it
        events.send(f"{type(e).__name__}: {e}")
        return
    events.send("ready")
    while True:
        try:
            command = commands.recv()
        except (EOFError, OSError):
            break   # the server is gone
        if command[0] == "submit":
            _, rid, prompt_ids, opts, logprobs = command
            request = Request(prompt_ids, opts, logprobs=logprobs)
            request.rid, request.open_rows = rid, opts.n
            request._wake = functools.partial(ready.append, request)
            requests[rid] = request
            try:
                batcher.submit_ids(request)
            except BatcherClosed:
                break
        elif command[0] == "cancel":
            request = requests.get(command[1])
            if request is not None:
                request.cancel()
        else:
            break
    batcher.close()
