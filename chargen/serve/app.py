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
import logging
import math
import secrets
import signal
import sys
import threading
import time
from dataclasses import dataclass

from ..errors import ChargenError

# OpenAI fields that change nothing here when left at their neutral value, and are refused otherwise.
_NEUTRAL = {"best_of": (None, 1), "logit_bias": (None, {}), "presence_penalty": (None, 0, 0.0),
            "frequency_penalty": (None, 0, 0.0), "suffix": (None, ""), "user": None}
_FIELDS = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "stream", "echo",
           "logprobs", "stream_options"}
MAX_LOGPROBS = 5          # likeliest characters a completion may list per position (OpenAI's cap too)
LOGPROBS_CHARS = 1 << 16  # characters (rows x max_tokens) one request may ask log-probabilities for


log = logging.getLogger("chargen.serve.app")
STREAM_INTERVAL = 0.02   # seconds between a stream's chunks: 50 a second, smoother than the eye needs
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
               max_batch: int = 256, run_dir=None, decode_process: bool = True, threads: int | None = None,
               allowed_hosts: set[str] | None = None, stream_interval: float = STREAM_INTERVAL):
    """The Starlette application serving ``sampler`` under the name ``model_name`` (and, for ``/v1/run``,
    the run folder it was loaded from). ``decode_process``: decode in a process of its own
    (:class:`~chargen.batching.ProcessBatcher`, with ``threads`` torch threads), not in a thread that shares
    the server's interpreter lock. ``allowed_hosts``: the Host header names answered (others get 400: a web
    page cannot reach a local server through a name of its own, DNS rebinding); None answers any.
    ``stream_interval``: seconds a stream waits after a chunk before the next (what is ready then goes in
    one chunk); 0 sends every step's text."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    from .batcher import Batcher, BatcherClosed, ProcessBatcher

    limits = limits or Limits()
    created = int(time.time())
    state = {"scores_waiting": 0}
    scoring = asyncio.Semaphore(1)

    def error(e: ApiError) -> Response:
        # ASCII JSON: a message may quote what the client sent, lone surrogates included
        body = {"error": {"message": e.message, "type": e.kind, "param": e.param, "code": None}}
        return Response(json.dumps(body), status_code=e.status, media_type="application/json")

    def check_key(request: Request) -> None:
        if api_key is not None and not secrets.compare_digest(   # in constant time
                request.headers.get("authorization", "").encode("latin-1", "replace"), f"Bearer {api_key}".encode()):
            raise ApiError(401, "a valid API key is required: send Authorization: Bearer KEY",
                           kind="authentication_error")

    def guard(handler, needs_key: bool, json_body: bool = False):
        async def wrapped(request: Request):
            try:
                if allowed_hosts is not None and _host_name(request.headers.get("host", "")) not in allowed_hosts:
                    raise ApiError(400, "this server answers only requests addressed to this machine "
                                        f"({', '.join(sorted(allowed_hosts))}); check the URL's host")
                if needs_key:
                    check_key(request)
                if json_body and \
                        request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
                    # a web page elsewhere cannot send this without the browser asking first (CORS preflight)
                    raise ApiError(415, "send the body as JSON, with Content-Type: application/json")
                return await handler(request)
            except ApiError as e:
                return error(e)
            except Exception as e:  # noqa: BLE001 - a bug: logged, and the client still gets an error object
                log.exception("chargen serve: %s %s failed", request.method, request.url.path)
                return error(ApiError(500, f"internal error: {type(e).__name__}; see the server's log",
                                      kind="server_error"))
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
        logprobs, include_usage = opts.pop("logprobs", None), opts.pop("include_usage", False)
        batcher = state["batcher"]
        if state.get("stopping"):
            raise ApiError(503, _SHUTTING_DOWN, kind="server_error")
        if len(prompts) * opts["n"] > limits.max_queued:
            raise ApiError(400, f"{len(prompts)} prompt(s) x n={opts['n']} is more rows than this server ever "
                                f"decodes at once ({limits.max_queued}, its --max-queued)", "n")
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
            return StreamingResponse(_sse(ready, submitted, prompts, n, echo, logprobs is not None, include_usage,
                                          head, stream_interval), media_type="text/event-stream")
        got = await _collect(ready, submitted, n, request)
        if got is None:   # nobody is there to read an answer
            return Response(status_code=499)
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
        answer = {**head, "choices": choices, "usage": _usage(prompts, n, sum(map(len, texts)))}
        # made in a thread: a big answer (n x 4096 characters, logprobs) would hold up every stream
        return Response(await asyncio.to_thread(_json_bytes, answer), media_type="application/json")

    async def score(request: Request):
        body = await _read_json(request, limits.max_body)
        unknown = sorted(set(body) - {"model", "text", "logprobs"})
        if unknown:
            raise ApiError(400, f"unknown field(s): {', '.join(map(ascii, unknown))}", unknown[0])
        _check_model(body, model_name)
        text, want_logprobs = body.get("text"), body.get("logprobs", False)
        if not isinstance(text, str) or not text:
            raise ApiError(400, "text must be a non-empty string", "text")
        if len(text) > limits.max_prompt:
            raise ApiError(400, f"text is {len(text):,} characters; at most {limits.max_prompt:,} are scored "
                                "(chargen eval scores whole files)", "text")
        if not isinstance(want_logprobs, bool):
            raise ApiError(400, f"logprobs must be true or false, got {want_logprobs!r}", "logprobs")
        if scoring.locked() and state["scores_waiting"] >= limits.max_prompts:
            raise ApiError(429, "the server is busy scoring; try again soon", kind="rate_limit_error")
        state["scores_waiting"] += 1
        try:   # one at a time (a long text's activations take memory); a client that left is skipped
            while True:
                try:
                    await asyncio.wait_for(scoring.acquire(), 0.25)
                    break
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return Response(status_code=499)
        finally:
            state["scores_waiting"] -= 1
        try:
            result = await asyncio.to_thread(sampler.score, text)
        except ChargenError as e:
            raise ApiError(400, str(e), "text") from None
        finally:
            scoring.release()
        out = {"object": "score", "model": model_name, "chars": result.count, "nats": result.nats, "bpc": result.bpc}
        if want_logprobs:
            out["logprobs"] = [round(float(x), 6) for x in result.logprobs]
        return JSONResponse(out)

    async def run_summary(request: Request):
        if run_dir is None:
            raise ApiError(404, "this server was not started from a run folder", kind="not_found_error")
        return JSONResponse(await asyncio.to_thread(_run_summary, run_dir, model_name))

    async def not_found(request: Request, exc):
        return await guard(_raise(ApiError(404, f"no route {request.method} {request.url.path}; see GET /v1/models")),
                           request.url.path.startswith("/v1"))(request)

    async def bad_method(request: Request, exc):
        return await guard(_raise(ApiError(405, f"{request.method} is not allowed on {request.url.path}")),
                           request.url.path.startswith("/v1"))(request)

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
              Route("/v1/completions", guard(completions, True, json_body=True), methods=["POST"]),
              Route("/v1/score", guard(score, True, json_body=True), methods=["POST"]), Route("/v1/run", guard(run_summary, True))]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: bad_method})
    app.router.redirect_slashes = False   # /v1/models/ is a 404 error object, not a redirect
    app.state.chargen = state
    return app


def _page() -> str:
    """The web page: one static file shipped in the package (no build step, nothing fetched)."""
    from importlib.resources import files
    return files("chargen.serve").joinpath("web", "index.html").read_text(encoding="utf-8")


def _run_summary(run_dir, model_name: str) -> dict:
    """The run's summary (``chargen info``) and its curves from metrics.jsonl: training loss and
    validation bpc against the step."""
    from ..runs.info import run_info
    from ..runs.folder import read_metrics
    try:
        info = run_info(run_dir)
        rows = [r for r in read_metrics(run_dir) if "event" not in r]   # events (a skipped step...) are no curve
    except (ChargenError, OSError, ValueError, TypeError) as e:
        raise ApiError(500, f"cannot read the run {run_dir}: {e}", kind="server_error") from None

    def curve(key: str) -> list:
        return [[r["step"], r[key]] for r in rows if _finite(r.get("step")) and _finite(r.get(key))]
    return _finite_only({"object": "run", "name": model_name, **info,
                         "train_loss": curve("loss"), "val_bpc": curve("val_bpc")})


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _finite_only(x):
    """JSON has no NaN or infinity: such numbers become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite_only(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite_only(v) for v in x]
    return x


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
    except RecursionError:
        raise ApiError(400, "the body is nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


def _completion_request(body: dict, model_name: str, limits: Limits) -> tuple[list[str], dict, bool, bool]:
    """Check an OpenAI completions body; (prompts, sampler options, stream, echo)."""
    unknown = sorted(set(body) - _FIELDS - set(_NEUTRAL))
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(map(ascii, unknown))}", unknown[0])
    for name, neutral in _NEUTRAL.items():
        if neutral is not None and name in body and body[name] not in neutral:
            raise ApiError(400, f"{name} is not supported by chargen (leave it out)", name)
    _check_model(body, model_name)
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
        if len(prompts) * opts["n"] * opts["length"] > LOGPROBS_CHARS:
            raise ApiError(400, f"logprobs for {len(prompts) * opts['n'] * opts['length']:,} characters "
                                f"(prompts x n x max_tokens); at most {LOGPROBS_CHARS:,} per request", "logprobs")
        if body.get("echo"):
            raise ApiError(400, "logprobs with echo is not supported: score the prompt with POST /v1/score",
                           "logprobs")
    flags = {}
    for name in ("stream", "echo"):
        value = body.get(name, False)
        if not isinstance(value, bool):
            raise ApiError(400, f"{name} must be true or false, got {value!r}", name)
        flags[name] = value
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise ApiError(400, "user must be a string", "user")
    options = body.get("stream_options")
    if options is not None:
        if not flags["stream"]:
            raise ApiError(400, "stream_options is only for stream: true", "stream_options")
        if not isinstance(options, dict) or set(options) - {"include_usage"} or \
                not isinstance(options.get("include_usage", False), bool):
            raise ApiError(400, 'stream_options may only be {"include_usage": true or false}', "stream_options")
        opts["include_usage"] = options.get("include_usage", False)
    return prompts, opts, flags["stream"], flags["echo"]


def _json_bytes(x) -> bytes:
    return json.dumps(x, ensure_ascii=False, separators=(",", ":")).encode()


def _check_model(body: dict, model_name: str) -> None:
    if "model" in body and body["model"] != model_name:
        raise ApiError(404, f"model {ascii(body['model'])} is not served here; this server serves {model_name!r}",
                       "model", kind="not_found_error")


def _raise(e: ApiError):
    async def handler(request):
        raise e
    return handler


def _number(body: dict, name: str, kind: type, default, low, high):
    value = body.get(name)
    if value is None:
        return default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and kind is int:
        ok = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    # compared before anything converts it: an int of 400 digits is no float
    if not ok or (isinstance(value, float) and not math.isfinite(value)) or not low <= value <= high:
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


async def _events(ready: asyncio.Event, submitted: list, timeout: float | None = None) -> list[tuple[int, tuple]]:
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


async def _collect(ready: asyncio.Event, submitted: list, n: int, request) -> _Gathered | None:
    """Every event of a request that is not streamed; None if its client went away (its rows are then
    cancelled: they stop taking room at once)."""
    got, checked = _Gathered(n), time.monotonic()
    try:
        while len(got.reasons) < len(submitted) * n:
            for p, event in await _events(ready, submitted, timeout=0.25):
                got.add(p, event)
            if time.monotonic() - checked >= 0.25:   # busy or not, look for a client that left
                if await request.is_disconnected():
                    return None
                checked = time.monotonic()
        return got
    finally:
        if len(got.reasons) < len(submitted) * n:
            for r in submitted:
                r.cancel()


def _logprobs_object(text: str, entries: list, offset: int) -> dict:
    """OpenAI's logprobs of a completion's text: one token per character."""
    return {"tokens": list(text), "token_logprobs": [lp for lp, _ in entries],
            "top_logprobs": [dict(top) for _, top in entries], "text_offset": list(range(offset, offset + len(text)))}


def _usage(prompts: list[str], n: int, completion_chars: int) -> dict:
    prompt_chars = sum(len(p) for p in prompts) * n
    return {"prompt_tokens": prompt_chars, "completion_tokens": completion_chars,
            "total_tokens": prompt_chars + completion_chars}


async def _sse(ready: asyncio.Event, submitted: list, prompts: list[str], n: int, echo: bool, logprobs: bool,
               include_usage: bool, head: dict, interval: float = 0.0):
    """The stream of chunks; a client that goes away cancels its rows at once. The first text goes out as
    soon as it is drawn; after each write the stream waits ``interval`` seconds and then sends whatever is
    ready in one write (one chunk per choice), so a busy server writes, and its clients parse, far fewer
    chunks for the same text."""
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
            if interval and open_rows:   # the next write then takes what is ready by then
                await asyncio.sleep(interval)
        if include_usage:   # OpenAI's last chunk: no choices, the usage
            generated = sum(sent) - (sum(len(p) for p in prompts) * n if echo else 0)
            yield "data: " + json.dumps({**head, "choices": [], "usage": _usage(prompts, n, generated)}) + "\n\n"
        yield "data: [DONE]\n\n"
    finally:
        for r in submitted:
            r.cancel()


def serve(run_dir, *, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu", checkpoint: str = "best",
          api_key: str | None = None, max_batch: int = 256, limits: Limits | None = None,
          threads: int | None = None, stream_interval: float = STREAM_INTERVAL) -> None:
    """Load a run and serve it until Ctrl-C (see the module docstring)."""
    from ..generate.sampler import torch_installed
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        raise ChargenError('chargen serve needs its extra: pip install "chargen[serve]"') from None
    if not torch_installed():   # its decoding loop runs on the torch backend
        raise ChargenError('chargen serve needs its extra: pip install "chargen[serve]" (it runs on torch)')
    import ipaddress
    import socket
    from pathlib import Path

    from ..generate.sampler import Sampler
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
        sampler = Sampler.load(run_dir, device=device, checkpoint=checkpoint, backend="torch")
        # On a loopback address, only requests naming this machine: a web page cannot reach the server through
        # a name of its own (DNS rebinding).
        local = ipaddress.ip_address(address[0].split("%")[0]).is_loopback
        app = create_app(sampler, Path(run_dir).resolve().name, api_key=api_key, limits=limits,
                         max_batch=max_batch, run_dir=run_dir, threads=threads, stream_interval=stream_interval,
                         allowed_hosts={"localhost", "127.0.0.1", "::1", host} if local else None)
        # Ctrl-C (or SIGTERM, SIGHUP): stop taking requests, give running ones SHUTDOWN_GRACE seconds, then
        # end them, stop the decoding process and return; a second Ctrl-C stops at once.
        limits = limits or Limits()
        server = _server_class()(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=SHUTDOWN_GRACE + 1,
                                                limit_concurrency=limits.max_queued + 256))
        logging.getLogger("uvicorn.error").addFilter(_quiet_when_stopping(app.state.chargen))
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


def _quiet_when_stopping(state: dict):
    """A filter for uvicorn's log: once the server is stopping, requests cut short (clients that do not read,
    requests half sent) are expected; one line says how many, not a traceback each."""
    def keep(record: logging.LogRecord) -> bool:
        if not state.get("stopping"):
            return True
        if record.exc_info and isinstance(record.exc_info[1], (asyncio.CancelledError, KeyboardInterrupt)):
            return False
        if record.getMessage().rstrip().endswith(("CancelledError", "KeyboardInterrupt")):  # a traceback as text
            return False
        if record.getMessage().startswith("Cancel "):
            record.msg, record.args = "chargen serve: %s request(s) still open after %s s were cut short", \
                (record.args[0] if record.args else "some", SHUTDOWN_GRACE)
        return True
    return keep


def _host_name(header: str) -> str:
    """The name in a Host header, without its port: ``[::1]:8000`` -> ``::1``, ``LocalHost:8000`` ->
    ``localhost``; a header of another shape is returned whole (it names no allowed host)."""
    header = header.lower()
    if header.startswith("["):
        name, _, rest = header[1:].partition("]")
        return name if rest == "" or (rest.startswith(":") and rest[1:].isdigit()) else header
    name, colon, port = header.partition(":")
    return name if not colon or port.isdigit() else header


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
