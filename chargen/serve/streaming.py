"""A completion's events on their way to its client: waking the event loop from the batcher's thread
(:class:`Waker`), gathering a request's events by choice (:func:`collect`, for an answer in one piece),
and OpenAI's Server-Sent Events stream of chunks (:func:`sse`)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from .state import SHUTTING_DOWN

if TYPE_CHECKING:
    from starlette.requests import Request as HTTPRequest

    from .request import Request


class Waker:
    """Wakes the event loop's waiting requests from the batcher's thread with at most one call into the
    loop at a time: requests made ready while a call is pending ride along with it."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.lock = loop, threading.Lock()
        self.ready: list[asyncio.Event] = []

    def bind(self, event: asyncio.Event) -> Callable[[], None]:
        return lambda: self._mark(event)

    def _mark(self, event: asyncio.Event) -> None:
        with self.lock:
            self.ready.append(event)
            if len(self.ready) > 1:
                return  # a call is already on its way
        self.loop.call_soon_threadsafe(self._fire)

    def _fire(self) -> None:
        with self.lock:
            ready, self.ready = self.ready, []
        for event in ready:
            event.set()


async def _events(
    ready: asyncio.Event, submitted: list[Request], timeout: float | None = None
) -> list[tuple[int, tuple]]:
    """Wait until some of a request's generations have events; all of them, as (prompt index, event)
    (none if ``timeout`` seconds pass first)."""
    while True:
        ready.clear()
        out = [(p, e) for p, r in enumerate(submitted) for e in r.take()]
        if out:
            return out
        try:
            await asyncio.wait_for(ready.wait(), timeout)
        except asyncio.TimeoutError:
            return []


class Gathered:
    """A request's events by choice (prompt ``p``, row ``r``: choice ``p * n + r``): text, log-probability
    entries, and how each ended."""

    def __init__(self, n: int):
        self.n = n
        self.texts: dict[int, str] = {}
        self.entries: dict[int, list] = {}
        self.reasons: dict[int, str] = {}

    def add(self, p: int, event: tuple) -> None:
        kind, row, value = event
        i = p * self.n + row
        if kind == "text":
            self.texts[i] = self.texts.get(i, "") + value
        elif kind == "logprobs":
            self.entries.setdefault(i, []).extend(value)
        else:
            self.reasons[i] = value


def _nothing(*args: object) -> None:
    pass


async def collect(
    ready: asyncio.Event, submitted: list[Request], n: int, request: HTTPRequest, first: Callable[[], None] = _nothing
) -> Gathered | None:
    """Every event of a request that is not streamed; None if its client went away (its rows are then
    cancelled: they stop taking room at once). ``first`` is called as text arrives (``metrics.clock``)."""
    got, checked = Gathered(n), time.monotonic()
    try:
        while len(got.reasons) < len(submitted) * n:
            for p, event in await _events(ready, submitted, timeout=0.25):
                got.add(p, event)
                if event[0] == "text":
                    first()
            if time.monotonic() - checked >= 0.25:  # busy or not, look for a client that left
                if await request.is_disconnected():
                    return None
                checked = time.monotonic()
        return got
    finally:
        if len(got.reasons) < len(submitted) * n:
            for r in submitted:
                r.cancel()


def logprobs_object(text: str, entries: list, offset: int) -> dict:
    """OpenAI's logprobs of a completion's text: one token per character."""
    return {
        "tokens": list(text),
        "token_logprobs": [lp for lp, _ in entries],
        "top_logprobs": [dict(top) for _, top in entries],
        "text_offset": list(range(offset, offset + len(text))),
    }


def usage(prompts: list[str], n: int, completion_chars: int) -> dict:
    """OpenAI's usage object, one token a character."""
    prompt_chars = sum(len(p) for p in prompts) * n
    return {
        "prompt_tokens": prompt_chars,
        "completion_tokens": completion_chars,
        "total_tokens": prompt_chars + completion_chars,
    }


async def sse(
    ready: asyncio.Event,
    submitted: list[Request],
    prompts: list[str],
    n: int,
    echo: bool,
    logprobs: bool,
    include_usage: bool,
    head: dict,
    interval: float = 0.0,
    first: Callable[[], None] = _nothing,
    counted: Callable[[int], None] = _nothing,
) -> AsyncIterator[str]:
    """The stream of chunks; a client that goes away cancels its rows at once. The first text goes out as
    soon as it is drawn; after each write the stream waits ``interval`` seconds and then sends whatever is
    ready in one write (one chunk per choice), so a busy server writes, and its clients parse, far fewer
    chunks for the same text. ``first`` is called as text arrives; ``counted`` is given the characters
    generated, at the end (``metrics.py``)."""
    # Every chunk is this JSON with the text, index, log-probabilities and finish reason filled in.
    before_text = "data: " + json.dumps({**head, "choices": [{"text": "@"}]}).rsplit('"@"', 1)[0]
    sent = [0] * (len(prompts) * n)  # characters sent per choice (text_offset)

    def chunk(i: int, text: str, reason: str | None, entries: list | None = None) -> str:
        lp = json.dumps(logprobs_object(text, entries, sent[i])) if logprobs and entries is not None else "null"
        sent[i] += len(text)
        end = f', "index": {i}, "logprobs": {lp}, "finish_reason": {json.dumps(reason)}}}]}}\n\n'
        return before_text + json.dumps(text) + end

    try:
        if echo:
            for i in range(len(prompts) * n):
                yield chunk(i, prompts[i // n], None)
        open_rows = len(prompts) * n
        while open_rows:
            got = Gathered(n)
            for p, event in await _events(ready, submitted):
                got.add(p, event)
            failed = set(got.reasons.values()) & {"error", "cancelled"}
            if failed:  # a stream can only say so in an event
                yield _error_event(failed, overflowed=any(r.overflowed for r in submitted))
                return
            if got.texts:
                first()
            out = [chunk(i, text, None, got.entries.get(i, [])) for i, text in got.texts.items()]
            out += [chunk(i, "", reason, []) for i, reason in got.reasons.items()]
            open_rows -= len(got.reasons)
            yield "".join(out)
            if interval and open_rows:  # the next write then takes what is ready by then
                await asyncio.sleep(interval)
        if include_usage:  # OpenAI's last chunk: no choices, the usage
            generated = sum(sent) - (sum(len(p) for p in prompts) * n if echo else 0)
            yield "data: " + json.dumps({**head, "choices": [], "usage": usage(prompts, n, generated)}) + "\n\n"
        yield "data: [DONE]\n\n"
    finally:
        counted(sum(sent) - (sum(len(p) for p in prompts) * n if echo else 0))
        for r in submitted:
            r.cancel()


def _error_event(failed: set[str], overflowed: bool = False) -> str:
    """The event that ends a stream whose rows ended badly: the client fell too far behind, the server
    stopping, or its decoding loop failed."""
    if overflowed:
        message = "the client fell too far behind reading this stream; it was ended (read as it comes)"
    elif failed == {"cancelled"}:
        message = SHUTTING_DOWN
    else:
        message = "the decoding loop failed; the server cannot generate now"
    return (
        "data: "
        + json.dumps({"error": {"message": message, "type": "server_error", "param": None, "code": None}})
        + "\n\n"
    )
