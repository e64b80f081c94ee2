"""Stopping a run cleanly: Ctrl-C (SIGINT), SIGTERM and SIGHUP become a request that the training loop
reads between two steps, where a checkpoint is exact; a second signal stops at once. Outside the loop
(:func:`stop_like_ctrl_c`) SIGTERM and SIGHUP act as Ctrl-C does, so what a half-started command made
is cleaned up either way."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def stop_like_ctrl_c() -> None:
    """Make SIGTERM and SIGHUP raise KeyboardInterrupt, as Ctrl-C does (where they still kill outright)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in _SIGNALS[1:]:
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, signal.default_int_handler)


class StopRequest:
    """Within the ``with`` block (main thread only: no other thread receives signals), SIGINT, SIGTERM
    or SIGHUP sets :attr:`requested` instead of interrupting; a second one raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # a signal ignored (nohup) stays ignored
            self._previous = {
                sig: signal.signal(sig, self._handler)
                for sig in _SIGNALS
                if signal.getsignal(sig) is not signal.SIG_IGN
            }
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


@contextlib.contextmanager
def ctrl_c_ignored() -> Iterator[None]:
    """Ignore Ctrl-C for the block (a checkpoint being written must not be cut short)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def ctrl_c_deferred() -> Iterator[None]:
    """Hold a Ctrl-C that arrives during the block and deliver it (KeyboardInterrupt) when the block ends.

    For importing numpy and torch: an interrupt that lands inside their C
    initialisation can be swallowed there and leave the module half made,
    which fails much later with a misleading error instead of stopping.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt
