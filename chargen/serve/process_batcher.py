"""The batcher's loop in a process of its own: :class:`ProcessBatcher` (the server's side: submit, cancel,
read each step's events back) and the decoding process it starts (a :class:`~.batcher.Batcher` fed
through a pipe)."""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import SampleOptions
from ..errors import ChargenError
from ..generate.sampler import Sampler
from .batcher import Batcher, BatcherClosed
from .request import Request
from .rows import check_logprobs

if TYPE_CHECKING:
    import asyncio
    from multiprocessing.connection import Connection

log = logging.getLogger(__name__)


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

    def __init__(
        self,
        sampler: Sampler,
        max_batch: int = 256,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        threads: int | None = None,
        start_timeout: float = 300.0,
        prompt_cache: int = 256,
    ):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # fork is unsafe with torch's threads
        self.sampler = sampler
        commands, self._commands = ctx.Pipe(duplex=False)
        self._events, events = ctx.Pipe(duplex=False)
        self._process = ctx.Process(
            target=_decoding_process,
            args=(commands, events, sampler, max_batch, threads, prompt_cache),
            name="chargen-decoder",
            daemon=True,
        )
        self._process.start()
        commands.close()
        events.close()
        self._lock = threading.Lock()  # the command pipe, the table and the counts
        self._requests: dict[int, _RemoteRequest] = {}
        self._next_id = 0
        self._open_rows = 0
        self._stats = dict(decoding=0, hits=0, misses=0)  # the decoding process's, as of its last message
        self.error: str | None = None
        self._wait_until_ready(start_timeout)
        self._loop = loop
        if loop is None:
            self._reader = threading.Thread(target=self._read, name="chargen-decoder-events", daemon=True)
            self._reader.start()
        else:
            self._closed = threading.Event()
            loop.add_reader(self._events.fileno(), self._read_ready)

    def _wait_until_ready(self, timeout: float) -> None:
        """The decoding process's first message: ready, or why it could not start."""
        if not self._events.poll(timeout):
            self._process.kill()
            raise ChargenError("the decoding process did not start")
        try:
            ready = self._events.recv()
        except EOFError:
            ready = "it exited"
        if ready != "ready":
            self._process.join(5)
            raise ChargenError(f"the decoding process could not start: {ready}")

    def submit(
        self,
        prompt: str,
        options: SampleOptions | None = None,
        wake: Callable[[], object] | None = None,
        logprobs: int | None = None,
        **settings: Any,
    ) -> Request:
        """Check and queue a generation; returns its :class:`Request` at once (see :meth:`Batcher.submit`)."""
        opts = self.sampler._options(prompt, options, settings)
        request = _RemoteRequest(self.sampler.encode(prompt, opts.unknown), opts, wake, self, check_logprobs(logprobs))
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

    def stats(self) -> dict[str, int]:
        """:meth:`Batcher.stats`, as the decoding process last said (after its last step with events)."""
        with self._lock:
            decoding = min(self._stats["decoding"], self._open_rows)
            return {**self._stats, "decoding": decoding, "waiting": self._open_rows - decoding}

    def _cancel(self, request: _RemoteRequest) -> None:
        with self._lock:
            if request.rid in self._requests and self.error is None:
                try:
                    self._commands.send(("cancel", request.rid))
                except OSError:
                    pass  # the process has gone: the reader ends the request

    def close(self) -> None:
        """Stop the decoding process; rows still open end as cancelled."""
        with self._lock:
            if self.error is None:
                self.error = "it was closed"
            try:
                self._commands.send(("close",))
                self._commands.close()
            except OSError:
                pass  # closed already, or the process has gone
        if self._loop is None:
            self._reader.join(60)
        elif not self._closed.is_set():  # the event loop is busy closing us: read the last messages here
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
        assert self._loop is not None  # the reader of an event loop
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
        if isinstance(message, str):  # the loop failed
            with self._lock:
                self.error = message
            return True
        items, stats = message
        with self._lock:
            self._stats = stats
        for rid, events in items:
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
                self._process.join(1)  # why it exited goes into the one line the server stops with
                self.error = f"the decoding process exited, {_exit_status(self._process.exitcode)}"
            orphans, self._requests, self._open_rows = self._requests, {}, 0
        reason = "cancelled" if self.error == "it was closed" else "error"
        for request in orphans.values():
            request.deliver([("end", i, reason) for i in range(request.opts.n)])


def _exit_status(code: int | None) -> str:
    if code is None:
        return "still running"
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


class _Numbered(Request):
    """A request as both sides of the pipe track it: its id, and how many of its rows are still open."""

    rid: int
    open_rows: int


class _RemoteRequest(_Numbered):
    def __init__(
        self,
        prompt_ids: np.ndarray,
        opts: SampleOptions,
        wake: Callable[[], object] | None,
        owner: ProcessBatcher,
        logprobs: int | None,
    ):
        super().__init__(prompt_ids, opts, wake, logprobs)
        self.owner, self.rid, self.open_rows = owner, -1, opts.n

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.owner._cancel(self)


# -- the decoding process -------------------------------------------------------


def _decoding_process(
    commands: Connection, events: Connection, sampler: Sampler, max_batch: int, threads: int | None, cache: int
) -> None:
    """The decoding process: a Batcher fed from ``commands``; each step's events go out in one message."""
    _leave_signals_to_the_server()
    if sampler.backend == "torch":  # the NumPy backend's matrix products are BLAS's, on one core or a few
        import torch

        torch.set_num_threads(threads or max(1, min(torch.get_num_threads(), (os.cpu_count() or 2) - 1)))
    outbox = _Outbox(events)
    try:
        outbox.batcher = Batcher(sampler, max_batch, on_step=outbox.ship, prompt_cache=cache)
    except Exception as e:  # said to the parent, which raises it
        events.send(f"{type(e).__name__}: {e}")
        return
    events.send("ready")
    while True:
        try:
            command = commands.recv()
        except (EOFError, OSError):
            break  # the server is gone
        if command[0] == "submit":
            try:
                outbox.batcher.submit_ids(outbox.add(*command[1:]))
            except BatcherClosed:
                break
        elif command[0] == "cancel":
            outbox.cancel(command[1])
        else:
            break
    outbox.batcher.close()


def _leave_signals_to_the_server() -> None:
    """Ctrl-C, SIGTERM and SIGHUP are the server's to handle (sent to the whole process group, they reach us
    too): it closes us after its grace period. Should the server die, our command pipe ends and so do we."""
    import signal

    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


class _Outbox:
    """The decoding process's requests by id, and its side of the event pipe: after each step, the events
    of every request that has some go to the server in one message."""

    def __init__(self, events: Connection):
        self.events = events
        self.batcher: Batcher | None = None
        self.requests: dict[int, _Numbered] = {}
        self.ready: list[_Numbered] = []  # requests with events this step (the loop's thread)

    def add(self, rid: int, prompt_ids: np.ndarray, opts: SampleOptions, logprobs: int | None) -> Request:
        request = _Numbered(prompt_ids, opts, logprobs=logprobs)
        request.rid, request.open_rows = rid, opts.n
        request._wake = functools.partial(self.ready.append, request)
        self.requests[rid] = request
        return request

    def cancel(self, rid: int) -> None:
        request = self.requests.get(rid)
        if request is not None:
            request.cancel()

    def ship(self) -> None:
        """The batcher's ``on_step``: this step's events, one message. Should the server be gone (killed:
        the pipe is broken), this process has no one to decode for and leaves at once, quietly."""
        try:
            self._ship()
        except (BrokenPipeError, ConnectionResetError, EOFError):
            os._exit(0)

    def _ship(self) -> None:
        assert self.batcher is not None  # set before any request is submitted to it
        if self.batcher.error:  # first: the parent knows why before it sees the rows end
            self.events.send(self.batcher.error)
        if self.ready:
            message = []
            for request in self.ready:
                taken = request.take()
                message.append((request.rid, taken))
                request.open_rows -= sum(kind == "end" for kind, _, _ in taken)
                if not request.open_rows:
                    self.requests.pop(request.rid, None)
            self.ready.clear()
            stats = self.batcher.stats()
            del stats["waiting"]  # the server knows its own
            self.events.send((message, stats))
