"""The batcher's rows: one row per sample being generated (:class:`Row`), and what a row may show of its
text as each character comes (:func:`advance`: text that may be the start of a stop string is held back;
the row ends at a stop string, at its length, or when cancelled)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ChargenError
from ..generate.stops import cut_at_stop, partial_stop_suffix
from .request import Request


def check_logprobs(k: int | None) -> int | None:
    """How many likeliest characters a request lists per position (None: no log-probabilities)."""
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
        raise ChargenError(f"logprobs must be a whole number >= 0 (how many likeliest characters), got {k!r}")
    return k


def done_before_start(request: Request) -> bool:
    return request.cancelled or request.opts.length == 0


@dataclass
class Row:
    request: Request
    index: int  # which of the request's n rows
    seed: int
    t: int = 0  # characters drawn so far
    pending: str = ""  # text held back: it may be the start of a stop string
    entries: list = field(default_factory=list)  # log-probabilities of the pending characters, if asked


def advance(row: Row, char: str, entry: tuple | None = None) -> bool:
    """Take the row's next character (and its log-probabilities, if asked for); emit what can be shown;
    whether the row goes on. A ``("logprobs", row, entries)`` event follows each text event of a row
    that asked, one entry per character."""
    request, opts = row.request, row.request.opts
    if request.cancelled:
        return end(row, "cancelled")
    row.t += 1
    pending = row.pending + char
    if entry is not None:
        row.entries.append(entry)

    def show(text: str) -> None:
        request.emit(("text", row.index, text))
        if entry is not None:
            request.emit(("logprobs", row.index, row.entries[: len(text)]))
            del row.entries[: len(text)]

    stops = opts.stop
    if stops:
        hit = cut_at_stop(pending, stops)
        if hit != pending:
            if hit:
                show(hit)
            return end(row, "stop")
        keep = partial_stop_suffix(pending, stops)
    else:
        keep = 0
    if len(pending) > keep:
        show(pending[: len(pending) - keep])
        pending = pending[len(pending) - keep :]
    row.pending = pending
    if row.t >= opts.length:
        if pending:
            show(pending)
        return end(row, "length")
    return True


def end(row: Row, reason: str) -> bool:
    row.request.emit(("end", row.index, reason))
    return False


def end_all(request: Request, reason: str) -> None:
    for i in range(request.opts.n):
        request.emit(("end", i, reason))
    request.flush()
