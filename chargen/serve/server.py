"""``chargen serve``: load a run and serve it with uvicorn until Ctrl-C (the app is ``app.py``).

The address is taken before the model loads (a port in use is one line, at once). Ctrl-C, SIGTERM or
SIGHUP stop taking requests, give running ones :data:`SHUTDOWN_GRACE` seconds, then end them and the
decoding process; a second Ctrl-C stops at once. Starlette, uvicorn and pydantic are imported only once
:func:`serve` has checked that the serve extra is installed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING, cast

from ..errors import ChargenError
from .state import STREAM_INTERVAL, AppState, Limits

if TYPE_CHECKING:
    import uvicorn
    from starlette.applications import Starlette

SHUTDOWN_GRACE = 3  # seconds running completions get to finish after Ctrl-C


def serve(
    run_dir: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "cpu",
    checkpoint: str = "best",
    backend: str = "auto",
    api_key: str | None = None,
    max_batch: int = 256,
    limits: Limits | None = None,
    threads: int | None = None,
    stream_interval: float = STREAM_INTERVAL,
    prompt_cache: int = 256,
    cors_origins: list[str] | None = None,
    offer_browser: bool = False,
) -> None:
    """Load a run and serve it until Ctrl-C (see the module docstring). ``backend``: ``torch``, ``numpy`` (the CPU,
    no torch), or ``auto`` (torch where installed). ``offer_browser``: the browser export at ``/web/`` too."""
    backend = _check_the_extra(backend)
    import ipaddress
    from pathlib import Path

    import uvicorn

    from ..generate.sampler import Sampler

    sock, address = _listen(host, port)
    with sock:
        from .app import create_app  # after the address: it imports torch, starlette and pydantic

        sampler = Sampler.load(run_dir, device=device, checkpoint=checkpoint, backend=backend)
        # On a loopback address, only requests naming this machine: no page reaches it by a name (DNS rebinding).
        local = ipaddress.ip_address(address[0].split("%")[0]).is_loopback
        app = create_app(
            sampler,
            Path(run_dir).resolve().name,
            api_key=api_key,
            limits=limits,
            max_batch=max_batch,
            run_dir=run_dir,
            threads=threads,
            stream_interval=stream_interval,
            prompt_cache=prompt_cache,
            cors_origins=cors_origins,
            browser_files=_browser_files(run_dir, checkpoint) if offer_browser else None,
            allowed_hosts={"localhost", "127.0.0.1", "::1", host} if local else None,
        )
        limits = limits or Limits()
        server = _server_class()(
            uvicorn.Config(
                app,
                log_level="warning",
                timeout_graceful_shutdown=SHUTDOWN_GRACE + 1,
                limit_concurrency=limits.max_queued + 256,
            )
        )
        logging.getLogger("uvicorn.error").addFilter(_QuietWhenStopping(app.state.chargen))
        bound = sock.getsockname()
        print(
            f"chargen serve: {run_dir} on http://{_url_host(bound[0])}:{bound[1]} (Ctrl-C stops)",
            file=sys.stderr,
            flush=True,
        )
        _run(server, sock)
    failed = getattr(server, "failed", None)
    if failed:
        raise ChargenError(f"the decoding loop failed ({failed}), so the server stopped; start it again")
    print("chargen serve: stopped", file=sys.stderr)


def _browser_files(run_dir: str | os.PathLike[str], checkpoint: str) -> dict[str, bytes]:
    """The run's browser export, served at /web/ (``serve/browser.py``)."""
    from ..generate.web_export import web_files

    return web_files(run_dir, checkpoint)


def _check_the_extra(backend: str) -> str:
    """The backend to serve on (``auto`` resolved); a ChargenError naming the extra when a part is missing."""
    from ..generate.backends import BACKENDS, torch_installed

    if backend not in BACKENDS:
        raise ChargenError(f"unknown backend {backend!r}; use auto, torch or numpy")
    try:
        import prometheus_client  # noqa: F401
        import pydantic  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ChargenError(
            'chargen serve needs its extra: pip install "chargen[serve]" (or "chargen[serve-numpy]" without torch)'
        ) from None
    if backend == "auto":
        backend = "torch" if torch_installed() else "numpy"
    if backend == "torch" and not torch_installed():
        raise ChargenError(
            'the torch backend needs PyTorch, which is not installed here: pip install "chargen[serve]", '
            "or serve with --backend numpy"
        )
    return backend


def _listen(host: str, port: int) -> tuple[socket.socket, tuple]:
    """A socket bound to the address, and the address: one that is taken or not this machine's is a plain
    error before the model loads."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise ChargenError(
            f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --host or --port"
        ) from None
    return sock, address


def _run(server: uvicorn.Server, sock: socket.socket) -> None:
    """Serve until stopped; SIGHUP (a closed terminal) stops it as Ctrl-C does."""
    hangup = signal.getsignal(signal.SIGHUP) if hasattr(signal, "SIGHUP") else None
    if hangup not in (None, signal.SIG_IGN):
        signal.signal(signal.SIGHUP, lambda sig, frame: server.handle_exit(signal.SIGINT, frame))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        if not server.should_exit:  # not uvicorn's own shutdown: let the caller say it was interrupted
            raise
    finally:
        if hangup not in (None, signal.SIG_IGN):
            signal.signal(signal.SIGHUP, hangup)


def _server_class() -> type[uvicorn.Server]:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, whose shutdown gives running completions SHUTDOWN_GRACE seconds and then ends
        them (the decoding loop closes: streams end with an error event, others get 503)."""

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            state: AppState = cast("Starlette", self.config.app).state.chargen  # the app serve() made
            state.stopping = True

            async def end_running() -> None:
                await asyncio.sleep(SHUTDOWN_GRACE)
                if state.batcher is not None:
                    state.batcher.close()

            ending = asyncio.create_task(end_running())
            try:
                await super().shutdown(sockets)
            finally:
                ending.cancel()

        async def on_tick(self, counter: int) -> bool:
            """uvicorn's check, every tenth of a second, whether to stop: also when the decoding loop has
            failed (its process killed, say). The requests open then have already ended with an error; a
            server that can only answer 503 stops, and its exit status tells a supervisor to restart it."""
            state: AppState = cast("Starlette", self.config.app).state.chargen
            error = state.batcher.error if state.batcher is not None else None
            if error and error != "it was closed" and not state.stopping:
                self.failed = error
                return True
            return await super().on_tick(counter)

    return Server


class _QuietWhenStopping(logging.Filter):
    """A filter for uvicorn's log: once the server is stopping, requests cut short (clients that do not read,
    requests half sent) are expected; one line says how many, not a traceback each."""

    def __init__(self, state: AppState):
        super().__init__()
        self.state = state

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.state.stopping:
            return True
        if record.exc_info and isinstance(record.exc_info[1], (asyncio.CancelledError, KeyboardInterrupt)):
            return False
        if record.getMessage().rstrip().endswith(("CancelledError", "KeyboardInterrupt")):  # a traceback as text
            return False
        if record.getMessage().startswith("Cancel "):
            record.msg, record.args = (
                "chargen serve: %s request(s) still open after %s s were cut short",
                (cast(tuple, record.args)[0] if record.args else "some", SHUTDOWN_GRACE),  # uvicorn's args: a tuple
            )
        return True


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
