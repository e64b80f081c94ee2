"""``chargen serve``: an OpenAI-compatible completions API over a trained run, with continuous batching.

Routes: ``POST /v1/completions`` (OpenAI's request and response shapes,
streamed as Server-Sent Events with ``stream``), ``GET /v1/models``,
``POST /v1/score`` (the loss of a text), ``GET /v1/run`` (the run's summary
and training curves), ``GET /health``. Every request is decoded in one shared
:class:`~chargen.batching.Batcher`, so concurrent clients share each step.

Built on Starlette and uvicorn, imported only here: ``pip install
"chargen[serve]"``. Every bad request gets OpenAI's error object
(``{"error": {"message", "type", "param", "code"}}``) with a 4xx status,
and the server goes on serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import signal
import sys
import threading
import time
from dataclasses import dataclass

from .errors import ChargenError

# OpenAI fields that change nothing here when left at their neutral value, and are refused otherwise.
_NEUTRAL = {"best_of": (None, 1), "logit_bias": (None, {}), "presence_penalty": (None, 0, 0.0),
            "frequency_penalty": (None, 0, 0.0), "suffix": (None, ""), "user": None,
            "stream_options": None}
_FIELDS = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "stream", "echo",
           "logprobs"}
MAX_LOGPROBS = 20   # likeliest characters a completion may list per position


SHUTDOWN_GRACE = 3   # seconds running completions get to finish after Ctrl-C
_SHUTTING_DOWN = "the server is shutting down; try again once it is back"


@dataclass
class Limits:
    """What one request may ask for, and how many may wait."""

    max_body: int = 1 << 20        # bytes of a request body
    max_prompt: int = 65536        # characters of one prompt
    max_length: int = 4096         # characters one choice may generate (max_tokens)
    max_n: int = 16                # choices per prompt
    max_prompts: int = 16          # prompts per request
    max_queued: int = 256          # rows decoding or waiting, beyond which new requests get 429


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def create_app(sampler, model_name: str, *, api_key: str | None = None, limits: Limits | None = None,
               max_batch: int = 256, run_dir=None, decode_process: bool = True, threads: int | None = None):
    """The Starlette application serving ``sampler`` under the name ``model_name`` (and, for ``/v1/run``,
    the run folder it was loaded from). ``decode_process``: decode in a process of its own
    (:class:`~chargen.batching.ProcessBatcher`, with ``threads`` torch threads), not in a thread that shares
    the server's interpreter lock."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.routing import Route

    from .batching import Batcher, BatcherClosed, ProcessBatcher

    limits = limits or Limits()
    created = int(time.time())
    state = {}

    def error(e: ApiError) -> JSONResponse:
        return JSONResponse({"error": {"message": e.message, "type": e.kind, "param": e.param, "code": None}},
                            status_code=e.status)

    def guard(handler, needs_key: bool):
        async def wrapped(request: Request):
            try:
                if needs_key and api_key is not None and \
                        request.headers.get("authorization", "") != f"Bearer {api_key}":
                    raise ApiError(401, "a valid API key is required: send Authorization: Bearer KEY",
                                   kind="authentication_error")
                return await handler(request)
            except ApiError as e:
                return error(e)
        return wrapped

    async def page(request: Request):
        return HTMLResponse(_page(), headers={"Cache-Control": "no-cache"})

    async def health(request: Request):
        batcher = state["batcher"]
        if batcher.error:
            return JSONResponse({"status": "error", "error": f"the decoding loop failed{_failure(batcher)}",
                                 "active": batcher.active}, status_code=503)
        return JSONResponse({"status": "ok", "active": batcher.active})

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [
            {"id": model_name, "object": "model", "created": created, "owned_by": "chargen"}]})

    async def completions(request: Request):
        body = await _read_json(request, limits.max_body)
        prompts, opts, stream, echo = _completion_request(body, model_name, limits)
        logprobs = opts.pop("logprobs", None)
        batcher = state["batcher"]
        if state.get("stopping"):
            raise ApiError(503, _SHUTTING_DOWN, kind="server_error")
        if batcher.active + len(prompts) * opts["n"] > limits.max_queued:
            raise ApiError(429, f"the server is busy ({batcher.active} rows decoding or waiting); try again soon",
                           kind="rate_limit_error")
        ready = asyncio.Event()
        wake = state["wake"](ready)
        submitted = []
        try:
            for prompt in prompts:
                submitted.append(batcher.submit(prompt, wake=wake, logprobs=logprobs, **opts))
        except ChargenError as e:
            for r in submitted:
                r.cancel()
            if isinstance(e, BatcherClosed):
                raise ApiError(503, str(e), kind="server_error") from None
            raise ApiError(400, str(e), "prompt" if "vocabulary" in str(e) else None) from None
        rid = f"cmpl-{secrets.token_hex(12)}"
        head = dict(id=rid, object="text_completion", created=int(time.time()), model=model_name)
        n = opts["n"]
        if stream:
            return StreamingResponse(_sse(ready, submitted, prompts, n, echo, logprobs is not None, head),
                                     media_type="text/event-stream")
        got = await _collect(ready, submitted, n)
        reasons = [got.reasons[i] for i in range(len(got.reasons))]
        if "error" in reasons:
            raise ApiError(500, f"the decoding loop failed{_failure(batcher)}; the server cannot generate now",
                           kind="server_error")
        if "cancelled" in reasons:
            raise ApiError(503, _SHUTTING_DOWN, kind="server_error")
        texts = [got.texts.get(i, "") for i in range(len(reasons))]
        choices = [{"text": (prompts[i // n] if echo else "") + texts[i], "index": i,
                    "logprobs": _logprobs_object(texts[i], got.entries.get(i, []), 0) if logprobs is not None
                    else None, "finish_reason": reasons[i]} for i in range(len(texts))]
        prompt_chars = sum(len(p) for p in prompts) * n
        completion_chars = sum(len(t) for t in texts)
        return JSONResponse({**head, "choices": choices, "usage": {
            "prompt_tokens": prompt_chars, "completion_tokens": completion_chars,
            "total_tokens": prompt_chars + completion_chars}})

    async def score(request: Request):
        body = await _read_json(request, limits.max_body)
        unknown = sorted(set(body) - {"model", "text", "logprobs"})
        if unknown:
            raise ApiError(400, f"unknown field(s): {', '.join(unknown)}", unknown[0])
        text, want_logprobs = body.get("text"), body.get("logprobs", False)
        if not isinstance(text, str) or not text:
            raise ApiError(400, "text must be a non-empty string", "text")
        if not isinstance(want_logprobs, bool):
            raise ApiError(400, f"logprobs must be true or false, got {want_logprobs!r}", "logprobs")
        try:
            result = await asyncio.to_thread(sampler.score, text)
        except ChargenError as e:
            raise ApiError(400, str(e), "text") from None
        out = {"object": "score", "model": model_name, "chars": result.count, "nats": result.nats, "bpc": result.bpc}
        if want_logprobs:
            out["logprobs"] = [round(float(x), 6) for x in result.logprobs]
        return JSONResponse(out)

    async def run_summary(request: Request):
        if run_dir is None:
            raise ApiError(404, "this server was not started from a run folder", kind="not_found_error")
        return JSONResponse(await asyncio.to_thread(_run_summary, run_dir, model_name))

    async def not_found(request: Request, exc):
        return error(ApiError(404, f"no route {request.method} {request.url.path}; see GET /v1/models"))

    async def bad_method(request: Request, exc):
        return error(ApiError(405, f"{request.method} is not allowed on {request.url.path}"))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        loop = asyncio.get_running_loop()
        if decode_process:   # its events are read in this loop: a request's wake sets its asyncio.Event
            state["batcher"] = ProcessBatcher(sampler, max_batch=max_batch, loop=loop, threads=threads)
            state["wake"] = lambda event: event.set
        else:
            state["batcher"] = Batcher(sampler, max_batch=max_batch)
            state["wake"] = _Waker(loop).bind
        try:
            yield
        finally:
            state["batcher"].close()

    routes = [Route("/", guard(page, False)), Route("/health", guard(health, False)),
              Route("/v1/models", guard(models, True)),
              Route("/v1/completions", guard(completions, True), methods=["POST"]),
              Route("/v1/score", guard(score, True), methods=["POST"]), Route("/v1/run", guard(run_summary, True))]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: bad_method})
    app.state.chargen = state
    return app


def _page() -> str:
    """The web page: one static file shipped in the package (no build step, nothing fetched)."""
    from importlib.resources import files
    return files("chargen").joinpath("web", "index.html").read_text(encoding="utf-8")


def _run_summary(run_dir, model_name: str) -> dict:
    """The run's summary (``chargen info``) and its curves from metrics.jsonl: training loss and
    validation bpc against the step."""
    from .info import run_info
    from .rundir import read_metrics
    info = run_info(run_dir)
    rows = read_metrics(run_dir)
    return {"object": "run", "name": model_name, **info,
            "train_loss": [[r["step"], r["loss"]] for r in rows if "loss" in r],
            "val_bpc": [[r["step"], r["val_bpc"]] for r in rows if "val_bpc" in r]}


async def _read_json(request, max_body: int) -> dict:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise ApiError(413, f"the request body is {int(declared):,} bytes; at most {max_body:,} are accepted")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_body:
            raise ApiError(413, f"the request body is over {max_body:,} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


def _completion_request(body: dict, model_name: str, limits: Limits) -> tuple[list[str], dict, bool, bool]:
    """Check an OpenAI completions body; (prompts, sampler options, stream, echo)."""
    unknown = sorted(set(body) - _FIELDS - set(_NEUTRAL))
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)}", unknown[0])
    for name, neutral in _NEUTRAL.items():
        if neutral is not None and name in body and body[name] not in neutral:
            raise ApiError(400, f"{name} is not supported by chargen (leave it out)", name)
    if "model" in body and body["model"] != model_name:
        raise ApiError(404, f"model {body['model']!r} is not served here; this server serves {model_name!r}",
                       "model", kind="not_found_error")
    prompt = body.get("prompt", "")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ApiError(400, "prompt must be a string or a non-empty list of strings", "prompt")
    if len(prompts) > limits.max_prompts:
        raise ApiError(400, f"at most {limits.max_prompts} prompts per request, got {len(prompts)}", "prompt")
    if any(len(p) > limits.max_prompt for p in prompts):
        raise ApiError(400, f"a prompt is longer than {limits.max_prompt:,} characters", "prompt")
    opts = {"length": _number(body, "max_tokens", int, 16, 0, limits.max_length),
            "temperature": _number(body, "temperature", float, 1.0, 0.0, 100.0),
            "n": _number(body, "n", int, 1, 1, limits.max_n)}
    if body.get("top_p") is not None:
        opts["top_p"] = _number(body, "top_p", float, 1.0, 0.0, 1.0)
        if opts["top_p"] == 0.0:
            raise ApiError(400, "top_p must be greater than 0", "top_p")
    if body.get("top_k") is not None:
        opts["top_k"] = _number(body, "top_k", int, None, 1, 1 << 31)
    if body.get("seed") is not None:
        opts["seed"] = _number(body, "seed", int, None, 0, 2**63 - 1)
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
            raise ApiError(400, "stop must be a non-empty string or a list of at most 4 of them", "stop")
        opts["stop"] = tuple(stops)
    if body.get("logprobs") is not None:
        opts["logprobs"] = _number(body, "logprobs", int, None, 0, MAX_LOGPROBS)
        if body.get("echo"):
            raise ApiError(400, "logprobs with echo is not supported: score the prompt with POST /v1/score",
                           "logprobs")
    flags = {}
    for name in ("stream", "echo"):
        value = body.get(name, False)
        if not isinstance(value, bool):
            raise ApiError(400, f"{name} must be true or false, got {value!r}", name)
        flags[name] = value
    return prompts, opts, flags["stream"], flags["echo"]


def _number(body: dict, name: str, kind: type, default, low, high):
    value = body.get(name)
    if value is None:
        return default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and kind is int:
        ok = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if not ok or not math.isfinite(value) or not low <= value <= high:
        what = "a whole number" if kind is int else "a number"
        raise ApiError(400, f"{name} must be {what} in [{low}, {high}], got {value!r}", name)
    return kind(value)


def _failure(batcher) -> str:
    return f": {batcher.error}" if batcher.error and batcher.error != "it was closed" else ""


class _Waker:
    """Wakes the event loop's waiting requests from the batcher's thread with at most one call into the
    loop at a time: requests made ready while a call is pending ride along with it."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.lock = loop, threading.Lock()
        self.ready: list[asyncio.Event] = []

    def bind(self, event: asyncio.Event):
        return lambda: self._mark(event)

    def _mark(self, event: asyncio.Event) -> None:
        with self.lock:
            self.ready.append(event)
            if len(self.ready) > 1:
                return   # a call is already on its way
        self.loop.call_soon_threadsafe(self._fire)

    def _fire(self) -> None:
        with self.lock:
            ready, self.ready = self.ready, []
        for event in ready:
            event.set()


async def _events(ready: asyncio.Event, submitted: list) -> list[tuple[int, tuple]]:
    """Wait until some of a request's generations have events; all of them, as (prompt index, event)."""
    while True:
        ready.clear()
        out = [(p, e) for p, r in enumerate(submitted) for e in r.take()]
        if out:
            return out
        await ready.wait()


class _Gathered:
    """A request's events by choice (prompt ``p``, row ``r``: choice ``p * n + r``): text, log-probability
    entries, and how each ended."""

    def __init__(self, n: int):
        self.n, self.texts, self.entries, self.reasons = n, {}, {}, {}

    def add(self, p: int, event: tuple) -> None:
        kind, row, value = event
        i = p * self.n + row
        if kind == "text":
            self.texts[i] = self.texts.get(i, "") + value
        elif kind == "logprobs":
            self.entries.setdefault(i, []).extend(value)
        else:
            self.reasons[i] = value


async def _collect(ready: asyncio.Event, submitted: list, n: int) -> _Gathered:
    got = _Gathered(n)
    while len(got.reasons) < len(submitted) * n:
        for p, event in await _events(ready, submitted):
            got.add(p, event)
    return got


def _logprobs_object(text: str, entries: list, offset: int) -> dict:
    """OpenAI's logprobs of a completion's text: one token per character."""
    return {"tokens": list(text), "token_logprobs": [lp for lp, _ in entries],
            "top_logprobs": [dict(top) for _, top in entries], "text_offset": list(range(offset, offset + len(text)))}


async def _sse(ready: asyncio.Event, submitted: list, prompts: list[str], n: int, echo: bool, logprobs: bool,
               head: dict):
    """The stream of chunks; a client that goes away cancels its rows at once. Whatever is ready goes
    out in one write: one chunk per choice per write, so a busy server sends fewer, larger chunks."""
    # Every chunk is this JSON with the text, index, log-probabilities and finish reason filled in.
    before_text = "data: " + json.dumps({**head, "choices": [{"text": "@"}]}).rsplit('"@"', 1)[0]
    sent = [0] * (len(prompts) * n)    # characters sent per choice (text_offset)

    def chunk(i: int, text: str, reason, entries=None) -> str:
        lp = json.dumps(_logprobs_object(text, entries, sent[i])) if logprobs and entries is not None else "null"
        sent[i] += len(text)
        end = f', "index": {i}, "logprobs": {lp}, "finish_reason": {json.dumps(reason)}}}]}}\n\n'
        return before_text + json.dumps(text) + end
    try:
        if echo:
            for i in range(len(prompts) * n):
                yield chunk(i, prompts[i // n], None)
        open_rows = len(prompts) * n
        while open_rows:
            got = _Gathered(n)
            for p, event in await _events(ready, submitted):
                got.add(p, event)
            failed = set(got.reasons.values()) & {"error", "cancelled"}
            if failed:   # a stream can only say so in an event
                message = _SHUTTING_DOWN if failed == {"cancelled"} else \
                    "the decoding loop failed; the server cannot generate now"
                yield "data: " + json.dumps({"error": {"message": message, "type": "server_error", "param": None,
                                                       "code": None}}) + "\n\n"
                return
            out = [chunk(i, text, None, got.entries.get(i, [])) for i, text in got.texts.items()]
            out += [chunk(i, "", reason, []) for i, reason in got.reasons.items()]
            open_rows -= len(got.reasons)
            yield "".join(out)
        yield "data: [DONE]\n\n"
    finally:
        for r in submitted:
            r.cancel()


def serve(run_dir, *, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu", checkpoint: str = "best",
          api_key: str | None = None, max_batch: int = 256, limits: Limits | None = None,
          threads: int | None = None) -> None:
    """Load a run and serve it until Ctrl-C (see the module docstring)."""
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        raise ChargenError('chargen serve needs its extra: pip install "chargen[serve]"') from None
    import socket
    from pathlib import Path

    from .sample import Sampler
    # The address first: one that is taken or not this machine's is a plain error before the model loads.
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise ChargenError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --host or --port") \
            from None
    with sock:
        sampler = Sampler.load(run_dir, device=device, checkpoint=checkpoint)
        app = create_app(sampler, Path(run_dir).resolve().name, api_key=api_key, limits=limits,
                         max_batch=max_batch, run_dir=run_dir, threads=threads)
        # Ctrl-C (or SIGTERM, SIGHUP): stop taking requests, give running ones SHUTDOWN_GRACE seconds, then
        # end them, stop the decoding process and return; a second Ctrl-C stops at once.
        server = _server_class()(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=SHUTDOWN_GRACE + 10))
        bound = sock.getsockname()
        print(f"chargen serve: {run_dir} on http://{_url_host(bound[0])}:{bound[1]} (Ctrl-C stops)",
              file=sys.stderr, flush=True)
        hangup = signal.getsignal(signal.SIGHUP) if hasattr(signal, "SIGHUP") else None
        if hangup not in (None, signal.SIG_IGN):
            signal.signal(signal.SIGHUP, lambda sig, frame: server.handle_exit(signal.SIGINT, frame))
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:
            if not server.should_exit:   # not uvicorn's own shutdown: let the caller say it was interrupted
                raise
        finally:
            if hangup not in (None, signal.SIG_IGN):
                signal.signal(signal.SIGHUP, hangup)
    print("chargen serve: stopped", file=sys.stderr)


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, whose shutdown gives running completions SHUTDOWN_GRACE seconds and then ends
        them (the decoding loop closes: streams end with an error event, others get 503)."""

        async def shutdown(self, sockets=None):
            state = self.config.app.state.chargen
            state["stopping"] = True

            async def end_running():
                await asyncio.sleep(SHUTDOWN_GRACE)
                if "batcher" in state:
                    state["batcher"].close()
            ending = asyncio.create_task(end_running())
            try:
                await super().shutdown(sockets)
            finally:
                ending.cancel()

    return Server


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
