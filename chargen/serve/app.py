"""``chargen serve``'s application: an OpenAI-compatible completions API over a trained run, with continuous
batching.

Routes (``routes.py``): ``POST /v1/completions`` (OpenAI's request and response shapes, streamed as
Server-Sent Events with ``stream``), ``GET /v1/models``, ``POST /v1/score`` (the loss of a text),
``GET /v1/run`` (the run's summary and training curves), ``POST /tokenize`` and ``POST /detokenize``
(llama.cpp's shapes, ``tokens.py``), ``GET /health``, ``GET /metrics`` (Prometheus's text, ``metrics.py``),
and the web page at ``/``.
Every request is decoded in one shared :class:`~chargen.serve.batcher.Batcher`, so concurrent clients
share each step.

:func:`create_app` builds the Starlette application from those routes and one :class:`~.state.AppState`;
its :func:`lifespan` starts the decoding loop and closes it; :func:`guard` stands in front of every route:
the Host header, the API key, the body's type, and every refused request (or bug) as OpenAI's error object
(``{"error": {"message", "type", "param", "code"}}``) with a 4xx (or 500) status, the server serving on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import browser, inspecting, routes, tokens
from .metrics import Metrics
from .schema import ApiError, clip
from .state import STREAM_INTERVAL, AppState, Limits
from .streaming import Waker

if TYPE_CHECKING:
    from ..generate.sampler import Sampler

# A route: a function of the request that answers it.
_Handler = Callable[[Request], Awaitable[Response]]

log = logging.getLogger(__name__)


def create_app(
    sampler: Sampler,
    model_name: str,
    *,
    api_key: str | None = None,
    limits: Limits | None = None,
    max_batch: int = 256,
    run_dir: str | os.PathLike[str] | None = None,
    decode_process: bool = True,
    threads: int | None = None,
    allowed_hosts: set[str] | None = None,
    stream_interval: float = STREAM_INTERVAL,
    prompt_cache: int = 256,
    cors_origins: list[str] | None = None,
    browser_files: dict[str, bytes] | None = None,
) -> Starlette:
    """The Starlette application serving ``sampler`` under the name ``model_name`` (and, for ``/v1/run``,
    the run folder it was loaded from). ``decode_process``: decode in a process of its own
    (:class:`~chargen.serve.process_batcher.ProcessBatcher`, with ``threads`` torch threads), not in a thread
    that shares the server's interpreter lock. ``allowed_hosts``: the Host header names answered (others get
    400: a web page cannot reach a local server through a name of its own, DNS rebinding); None answers any.
    ``stream_interval``: seconds a stream waits after a chunk before the next (what is ready then goes in
    one chunk); 0 sends every step's text. ``prompt_cache``: prompts whose state is kept (0: none).
    ``cors_origins``: the web origins (``https://example.org``) whose pages may call the API (CORS); none by
    default. ``browser_files``: the run's browser export (``web_export.web_files``), served at ``/web/``."""
    state = AppState(
        sampler,
        model_name,
        limits or Limits(),
        api_key=api_key,
        allowed_hosts=allowed_hosts,
        run_dir=run_dir,
        stream_interval=stream_interval,
        max_batch=max_batch,
        decode_process=decode_process,
        threads=threads,
        prompt_cache=prompt_cache,
        browser_files=browser_files,
    )
    state.metrics = Metrics(lambda: state.batcher.stats() if state.batcher is not None else None)
    app = Starlette(
        routes=[
            _route("/", routes.page),
            _route("/health", routes.health),
            _route("/metrics", routes.metrics),
            _route("/v1/models", routes.models, needs_key=True),
            _route("/v1/models/{model:path}", routes.model, needs_key=True),
            _post("/v1/completions", routes.completions),
            _post("/v1/score", routes.score),
            _route("/v1/run", routes.run_summary, needs_key=True),
            _post("/tokenize", tokens.tokenize),
            _post("/detokenize", tokens.detokenize),
            _post("/v1/inspect", inspecting.inspect),
            _route("/inspect.js", inspecting.asset),
            _route("/inspect.css", inspecting.asset),
            _route("/web", browser.folder),
            _route("/web/", browser.asset),
            _route("/web/{name}", browser.asset),
        ],
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: bad_method},
        middleware=_cors(cors_origins),
    )
    app.router.redirect_slashes = False  # /v1/models/ is a 404 error object, not a redirect
    app.state.chargen = state
    return app


def _route(path: str, handler: _Handler, needs_key: bool = False) -> Route:
    return Route(path, guard(handler, needs_key=needs_key, route=path))


def _post(path: str, handler: _Handler) -> Route:
    """A route that takes a JSON body (behind the key, when the server has one)."""
    return Route(path, guard(handler, needs_key=True, json_body=True, route=path), methods=["POST"])


def _cors(origins: list[str] | None) -> list[Middleware]:
    """CORS for the named origins (their pages may call the API, with a key); none when no origin is named."""
    if not origins:
        return []
    from starlette.middleware.cors import CORSMiddleware

    allowed = ", ".join(origins)

    class Cors(CORSMiddleware):
        """Starlette's CORS, its refused preflight said as OpenAI's error object."""

        def preflight_response(self, request_headers: Any) -> Response:
            answer = super().preflight_response(request_headers)
            if answer.status_code != 400:
                return answer
            why = bytes(answer.body).decode()  # "Disallowed CORS origin, method"
            refused = error_response(ApiError(400, f"{why}: this server allows {allowed}"))
            refused.headers.update({k: v for k, v in answer.headers.items() if k.startswith("access-control")})
            return refused

    return [
        Middleware(
            Cors,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    ]


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """The decoding loop lives as long as the server: started with it, closed when it stops."""
    state: AppState = app.state.chargen
    loop = asyncio.get_running_loop()
    if state.decode_process:  # its events are read in this loop: a request's wake sets its asyncio.Event
        from .process_batcher import ProcessBatcher

        state.batcher = ProcessBatcher(
            state.sampler, max_batch=state.max_batch, loop=loop, threads=state.threads, prompt_cache=state.prompt_cache
        )
        state.wake = lambda event: event.set
    else:
        from .batcher import Batcher

        state.batcher = Batcher(state.sampler, max_batch=state.max_batch, prompt_cache=state.prompt_cache)
        state.wake = Waker(loop).bind
    try:
        yield
    finally:
        state.batcher.close()


def guard(handler: _Handler, needs_key: bool = False, json_body: bool = False, route: str = "other") -> _Handler:
    """The route ``handler`` behind the checks every request passes (:func:`_check`); a refused request, and
    a bug (logged), become OpenAI's error object. Every answer is counted (``/metrics``) under ``route``."""

    async def guarded(request: Request) -> Response:
        response = await _answered(request, handler, needs_key, json_body)
        _count(request, route, response.status_code)
        return response

    return guarded


async def _answered(request: Request, handler: _Handler, needs_key: bool, json_body: bool) -> Response:
    try:
        _check(request, request.app.state.chargen, needs_key, json_body)
        return await handler(request)
    except ApiError as e:
        return error_response(e)
    except Exception as e:  # a bug: logged, and the client still gets an error object
        log.exception("chargen serve: %s %s failed", request.method, request.url.path)
        return error_response(
            ApiError(500, f"internal error: {type(e).__name__}; see the server's log", kind="server_error")
        )


def _count(request: Request, route: str, status: int) -> None:
    state: AppState = request.app.state.chargen
    metrics = state.metrics
    if metrics is not None:
        metrics.requests.labels(route, str(status)).inc()


def _check(request: Request, state: AppState, needs_key: bool, json_body: bool) -> None:
    """The Host header names this machine (where that is asked), the API key is right (on /v1), and a body
    comes as JSON."""
    if state.allowed_hosts is not None and _host_name(request.headers.get("host", "")) not in state.allowed_hosts:
        raise ApiError(
            400,
            "this server answers only requests addressed to this machine "
            f"({', '.join(sorted(state.allowed_hosts))}); check the URL's host",
        )
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    if (
        needs_key
        and state.api_key is not None
        and not (
            scheme.lower() == "bearer"  # the scheme's name is case-insensitive (RFC 9110)
            and secrets.compare_digest(token.strip().encode("latin-1", "replace"), state.api_key.encode())
        )
    ):
        raise ApiError(401, "a valid API key is required: send Authorization: Bearer KEY", kind="authentication_error")
    if json_body and request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        # a web page elsewhere cannot send this without the browser asking first (CORS preflight)
        raise ApiError(415, "send the body as JSON, with Content-Type: application/json")


def error_response(e: ApiError) -> Response:
    """OpenAI's error object with the error's status."""
    # ASCII JSON: a message may quote what the client sent, lone surrogates included
    body = {"error": {"message": clip(e.message, 600), "type": e.kind, "param": e.param, "code": None}}
    headers = {"Retry-After": "1"} if e.status == 429 else None  # full for now: the rows free up within moments
    return Response(json.dumps(body), status_code=e.status, media_type="application/json", headers=headers)


async def not_found(request: Request, exc: Exception) -> Response:
    """No such route: a 404 error object."""
    path = clip(request.url.path)
    if request.url.path.rstrip("/") in ("/v1/chat/completions", "/chat/completions"):
        message = (
            "this server serves a character-level model through the completions API only: POST /v1/completions "
            "with a prompt (there is no chat template)"
        )
    else:
        message = f"no route {request.method} {path}; see GET /v1/models"
    return _refused(request, ApiError(404, message))


async def bad_method(request: Request, exc: Exception) -> Response:
    """A route asked with another method: a 405 error object."""
    return _refused(request, ApiError(405, f"{request.method} is not allowed on {clip(request.url.path)}"))


def _refused(request: Request, error: ApiError) -> Response:
    """``error``, once the request passes the guard's checks: on /v1 the key first (without it, nothing says
    which routes exist)."""
    try:
        _check(request, request.app.state.chargen, needs_key=request.url.path.startswith("/v1"), json_body=False)
    except ApiError as e:
        error = e
    _count(request, "other", error.status)
    return error_response(error)


def _host_name(header: str) -> str:
    """The name in a Host header, without its port: ``[::1]:8000`` -> ``::1``, ``LocalHost:8000`` ->
    ``localhost``; a header of another shape is returned whole (it names no allowed host)."""
    header = header.lower()
    if header.startswith("["):
        name, _, rest = header[1:].partition("]")
        return name if rest == "" or (rest.startswith(":") and rest[1:].isdigit()) else header
    name, colon, port = header.partition(":")
    return name if not colon or port.isdigit() else header
