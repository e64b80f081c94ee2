"""What a running server holds: the :class:`Limits` on what a request may ask, and the :class:`AppState`
its routes read (``request.app.state.chargen``). Imports nothing heavy: the CLI builds ``Limits``."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

STREAM_INTERVAL = 0.02  # seconds between a stream's chunks: 50 a second, smoother than the eye needs
SHUTTING_DOWN = "the server is shutting down; try again once it is back"


@dataclass
class Limits:
    """What one request may ask for, and how many may wait."""

    max_body: int = 1 << 20  # bytes of a request body
    max_prompt: int = 65536  # characters of one prompt
    max_length: int = 4096  # characters one choice may generate (max_tokens)
    max_n: int = 16  # choices per prompt
    max_prompts: int = 16  # prompts per request
    max_queued: int = 256  # rows decoding or waiting, beyond which new requests get 429


@dataclass
class AppState:
    """The served model and the server's settings (fixed when the app is built), and what changes while it
    runs: the batcher (made when the server starts), whether it is stopping, the scores waiting."""

    sampler: Any  # a torch-backed Sampler
    model_name: str
    limits: Limits
    api_key: str | None = None
    allowed_hosts: set[str] | None = None  # Host header names answered; None: any
    run_dir: str | os.PathLike[str] | None = None
    stream_interval: float = STREAM_INTERVAL
    max_batch: int = 256
    decode_process: bool = True  # decode in a process of its own, not a thread beside the event loop
    threads: int | None = None  # torch threads of the decoding process
    prompt_cache: int = 256  # prompts whose state is kept (generate/prompt_cache.py); 0: none
    created: int = field(default_factory=lambda: int(time.time()))
    batcher: Any = None  # a Batcher or ProcessBatcher, while the server runs
    # an asyncio.Event -> the function the batcher calls (from its thread, or in the loop) to set it
    wake: Callable[[asyncio.Event], Callable[[], None]] | None = None
    stopping: bool = False
    scores_waiting: int = 0
    scoring: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))  # one score at a time
    metrics: Any = None  # the server's counters (metrics.Metrics)
    browser_files: dict[str, bytes] | None = None  # the browser export served at /web/ (--offer-browser)
