"""Stopping a run cleanly: Ctrl-C (SIGINT) and SIGTERM become a request that the training loop reads
between two steps, where a checkpoint is exact; a second signal stops at once."""

from __future__ import annotations

import contextlib
import signal
import threading

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Within the ``with`` block (main thread only: no other thread receives signals), SIGINT or
    SIGTERM sets :attr:`requested` instead of interrupting; a second one raises KeyboardInterrupt."""

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handler) for sig in _SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


@contextlib.contextmanager
def ctrl_c_ignored():
    """Ignore Ctrl-C for the block (a checkpoint being written must not be cut short)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
