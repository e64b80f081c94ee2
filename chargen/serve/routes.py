"""The server's routes: plain functions of the request that read the app's state
(``request.app.state.chargen``, an :class:`~.state.AppState`). A refused request raises
:class:`~.schema.ApiError`; the app's guard (``app.py``) turns it into OpenAI's error object.

``POST /v1/completions`` checks its body (:class:`~.schema.CompletionRequest`), makes sure there is room,
submits one generation per prompt to the shared batcher, and answers in one piece or as a stream
(``streaming.py``); ``POST /v1/score`` scores one text at a time; the rest are read-only.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import threading
import time
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from ..errors import ChargenError
from .batcher import BatcherClosed
from .schema import ApiError, CompletionRequest, ScoreRequest, clip
from .state import SHUTTING_DOWN, AppState
from .streaming import Gathered, collect, logprobs_object, sse, usage

if TYPE_CHECKING:
    import os

    from .batcher import Batcher
    from .process_batcher import ProcessBatcher


def _state(request: Request) -> AppState:
    return request.app.state.chargen


async def page(request: Request) -> Response:
    """``GET /``: the web page, one static file shipped in the package (no build step, nothing fetched)."""
    from importlib.resources import files

    html = files("chargen.serve").joinpath("web").joinpath("index.html").read_text(encoding="utf-8")
    return HTMLResponse(html, headers={"Cache-Control": "no-cache"})


async def health(request: Request) -> Response:
    """``GET /health``: ok and the rows decoding or waiting, or 503 once the decoding loop has failed."""
    batcher = _state(request).batcher
    if batcher.error:
        return JSONResponse(
            {"status": "error", "error": f"the decoding loop failed{_failure(batcher)}", "active": batcher.active},
            status_code=503,
        )
    return JSONResponse({"status": "ok", "active": batcher.active})


async def metrics(request: Request) -> Response:
    """``GET /metrics``: the server's counters in Prometheus's text format (``metrics.py``)."""
    from .metrics import CONTENT_TYPE

    return Response(_state(request).metrics.render(), media_type=CONTENT_TYPE)


def _model_object(state: AppState) -> dict:
    return {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "chargen"}


async def models(request: Request) -> Response:
    """``GET /v1/models``: the one model served."""
    return JSONResponse({"object": "list", "data": [_model_object(_state(request))]})


async def model(request: Request) -> Response:
    """``GET /v1/models/{id}``: the model served, by its name (what ``client.models.retrieve`` asks)."""
    state = _state(request)
    if request.path_params["model"] != state.model_name:
        raise ApiError(404, f"no model {clip(request.path_params['model'])!r}; this server serves {state.model_name!r}")
    return JSONResponse(_model_object(state))


async def completions(request: Request) -> Response:
    """``POST /v1/completions``: OpenAI's completions, each prompt's ``n`` choices decoded in the shared batch."""
    state = _state(request)
    body = CompletionRequest.parse(await read_json(request, state.limits.max_body), state.model_name, state.limits)
    bias = _bias_by_char(body.logit_bias, state.sampler.vocab.chars, state.sampler.vocab.unk_id)
    if body.beam is not None:
        return await _beam(request, state, body, bias)
    _check_room(state, body)
    ready, first = asyncio.Event(), state.metrics.clock()
    submitted = _submit(state, body, ready, bias)
    head = _head(state)
    if body.stream:
        return StreamingResponse(
            sse(
                ready,
                submitted,
                body.prompts,
                body.n,
                body.echo,
                body.logprobs is not None,
                body.include_usage,
                head,
                state.stream_interval,
                first,
                state.metrics.characters.inc,
            ),
            media_type="text/event-stream",
        )
    got = await collect(ready, submitted, body.rows, request, first)
    if got is None:  # nobody is there to read an answer
        return Response(status_code=499)
    state.metrics.characters.inc(sum(map(len, got.texts.values())))
    if body.rows > body.n:  # best_of: the n likeliest of each prompt's draws
        got = await asyncio.to_thread(_best, state, body, got)
    answer = _answer(state, body, head, got)
    # made in a thread: a big answer (n x 4096 characters, logprobs) would hold up every stream
    return Response(await asyncio.to_thread(_json_bytes, answer), media_type="application/json")


def _check_room(state: AppState, body: CompletionRequest) -> None:
    """Refuse a completion when the server is stopping, when it asks for more rows than are ever decoded at
    once, or when there is no room for its rows now."""
    prompts, n, limits = len(body.prompts), body.rows, state.limits
    if state.stopping:
        raise ApiError(503, SHUTTING_DOWN, kind="server_error")
    if prompts * n > limits.max_queued:
        raise ApiError(
            400,
            f"{prompts} prompt(s) x n={n} is more rows than this server ever decodes at once "
            f"({limits.max_queued}, its --max-queued)",
            "n",
        )
    if state.batcher.active + prompts * n > limits.max_queued:
        raise ApiError(
            429,
            f"the server is busy ({state.batcher.active} rows decoding or waiting); try again soon",
            kind="rate_limit_error",
        )


def _submit(state: AppState, body: CompletionRequest, ready: asyncio.Event, bias: dict | None) -> list:
    """One batcher request per prompt, each waking ``ready``; none if any is refused (then an ApiError)."""
    assert state.wake is not None  # set when the server starts (app.lifespan)
    wake, settings, submitted = state.wake(ready), {**body.sample_settings(), "n": body.rows}, []
    if bias:
        settings["logit_bias"] = bias
    try:
        for prompt in body.prompts:
            submitted.append(state.batcher.submit(prompt, wake=wake, logprobs=body.logprobs, **settings))
    except ChargenError as e:
        for r in submitted:
            r.cancel()
        if isinstance(e, BatcherClosed):
            raise ApiError(503, str(e), kind="server_error") from None
        raise ApiError(400, str(e), _param_of(str(e))) from None
    return submitted


def _best(state: AppState, body: CompletionRequest, got: Gathered) -> Gathered:
    """Of each prompt's ``best_of`` rows, the ``n`` whose texts are likeliest under the model, best first."""
    from ..generate.search import continuation_logprob

    rows, n, out = body.rows, body.n, Gathered(body.n)
    for p, prompt in enumerate(body.prompts):
        ids = state.sampler.encode(prompt, "unk")
        mine = range(p * rows, (p + 1) * rows)
        totals = {i: continuation_logprob(state.sampler, ids, got.texts.get(i, "")) for i in mine}
        for j, i in enumerate(sorted(mine, key=lambda i: -totals[i])[:n]):
            k = p * n + j
            out.texts[k], out.reasons[k] = got.texts.get(i, ""), got.reasons[i]
            if i in got.entries:
                out.entries[k] = got.entries[i]
    return out


async def _beam(request: Request, state: AppState, body: CompletionRequest, bias: dict | None) -> Response:
    """A completion by beam search: run beside the batcher, one search at a time (as scoring); it stops early
    (and answers 503, or nothing) when the server stops or the client leaves."""
    from ..config import SampleOptions
    from ..generate.search import Stopped, beam_search

    if state.stopping:
        raise ApiError(503, SHUTTING_DOWN, kind="server_error")
    if state.scoring.locked() and state.scores_waiting >= state.limits.max_prompts:
        raise ApiError(429, "the server is busy searching; try again soon", kind="rate_limit_error")
    try:
        opts = SampleOptions(**body.sample_settings(), logit_bias=bias)
        state.sampler._options("", opts, {})  # the bias against the vocabulary, before taking a turn
    except ChargenError as e:
        raise ApiError(400, str(e), _param_of(str(e))) from None
    if not await _take_turn(state, request):
        return Response(status_code=499)
    gone = threading.Event()  # the client left, or the server is stopping: the search stops at its next step
    watch = asyncio.create_task(_watch(request, state, gone))
    try:
        found = [await asyncio.to_thread(beam_search, state.sampler, p, opts, gone.is_set) for p in body.prompts]
    except Stopped:
        if state.stopping:
            raise ApiError(503, SHUTTING_DOWN, kind="server_error") from None
        return Response(status_code=499)
    except ChargenError as e:
        raise ApiError(400, str(e), _param_of(str(e))) from None
    finally:
        watch.cancel()
        state.scoring.release()
    return JSONResponse(_answer(state, body, _head(state), _beams(state, body, found)))


async def _watch(request: Request, state: AppState, gone: threading.Event) -> None:
    """Set ``gone`` once the client has left or the server is stopping."""
    while not gone.is_set():
        if state.stopping or await request.is_disconnected():
            gone.set()
        await asyncio.sleep(0.1)


def _beams(state: AppState, body: CompletionRequest, found: list) -> Gathered:
    got = Gathered(body.n)
    state.metrics.characters.inc(sum(len(text) for texts in found for text, _ in texts))
    for p, texts in enumerate(found):
        for j, (text, _) in enumerate(texts):
            got.texts[p * body.n + j] = text
            got.reasons[p * body.n + j] = "length" if len(text) == body.max_tokens else "stop"
    return got


def _head(state: AppState) -> dict:
    return dict(
        id=f"cmpl-{secrets.token_hex(12)}", object="text_completion", created=int(time.time()), model=state.model_name
    )


def _bias_by_char(logit_bias: dict[str, float] | None, chars: list[str], unk_id: int | None) -> dict | None:
    """``logit_bias`` by character (the sampler's), from token ids; ApiError for an id not in the vocabulary."""
    out = {}
    for key, bias in (logit_bias or {}).items():
        canonical = key.isascii() and key.isdigit() and len(key) <= 9 and key == str(int(key))
        i = int(key) if canonical else -1
        if i == unk_id:
            raise ApiError(400, f"logit_bias: {key!r} is the unknown token, never generated", "logit_bias")
        if not 0 <= i < len(chars):
            raise ApiError(400, f"logit_bias: {clip(key)!r} is not a token id (0 to {len(chars) - 1})", "logit_bias")
        out[chars[i]] = float(bias)
    return out or None


def _param_of(message: str) -> str | None:
    """The request field a sampler's refusal is about."""
    if message.startswith("logit_bias"):
        return "logit_bias"
    return "prompt" if "vocabulary" in message else None


def _answer(state: AppState, body: CompletionRequest, head: dict, got: Gathered) -> dict:
    """OpenAI's completion object from every choice's events (an error if the rows ended badly)."""
    reasons = [got.reasons[i] for i in range(len(got.reasons))]
    if "error" in reasons:
        raise ApiError(
            500,
            f"the decoding loop failed{_failure(state.batcher)}; the server cannot generate now",
            kind="server_error",
        )
    if "cancelled" in reasons:
        raise ApiError(503, SHUTTING_DOWN, kind="server_error")
    prompts, n = body.prompts, body.n
    texts = [got.texts.get(i, "") for i in range(len(reasons))]
    choices = [
        {
            "text": (prompts[i // n] if body.echo else "") + texts[i],
            "index": i,
            "logprobs": logprobs_object(texts[i], got.entries.get(i, []), 0) if body.logprobs is not None else None,
            "finish_reason": reasons[i],
        }
        for i in range(len(texts))
    ]
    return {**head, "choices": choices, "usage": usage(prompts, n, sum(map(len, texts)))}


async def score(request: Request) -> Response:
    """``POST /v1/score``: a text's loss under the model (and each character's log-probability, if asked)."""
    state = _state(request)
    body = ScoreRequest.parse(await read_json(request, state.limits.max_body), state.model_name, state.limits)
    if state.scoring.locked() and state.scores_waiting >= state.limits.max_prompts:
        raise ApiError(429, "the server is busy scoring; try again soon", kind="rate_limit_error")
    if not await _take_turn(state, request):
        return Response(status_code=499)
    try:
        result = await asyncio.to_thread(state.sampler.score, body.text)
    except ChargenError as e:
        raise ApiError(400, str(e), "text") from None
    finally:
        state.scoring.release()
    out = {"object": "score", "model": state.model_name, "chars": result.count, "nats": result.nats, "bpc": result.bpc}
    if body.logprobs:
        out["logprobs"] = [round(float(x), 6) for x in result.logprobs]
    return JSONResponse(out)


async def _take_turn(state: AppState, request: Request) -> bool:
    """Wait for the scorer (one text at a time: a long text's activations take memory); False if the client
    left meanwhile (it is skipped)."""
    state.scores_waiting += 1
    try:
        while True:
            try:
                await asyncio.wait_for(state.scoring.acquire(), 0.25)
                return True
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    return False
    finally:
        state.scores_waiting -= 1


async def run_summary(request: Request) -> Response:
    """``GET /v1/run``: the run's summary and training curves (404 if not started from a run folder)."""
    state = _state(request)
    if state.run_dir is None:
        raise ApiError(404, "this server was not started from a run folder", kind="not_found_error")
    return JSONResponse(await asyncio.to_thread(_run_summary, state.run_dir, state.model_name))


def _run_summary(run_dir: str | os.PathLike[str], model_name: str) -> dict:
    """The run's summary (``chargen info``) and its curves from metrics.jsonl: training loss and
    validation bpc against the step."""
    from ..runs.folder import read_metrics
    from ..runs.info import run_info

    try:
        info = run_info(run_dir)
        rows = [r for r in read_metrics(run_dir) if "event" not in r]  # events (a skipped step...) are no curve
    except (ChargenError, OSError, ValueError, TypeError) as e:
        raise ApiError(500, f"cannot read the run {run_dir}: {e}", kind="server_error") from None

    def curve(key: str) -> list:
        return [[r["step"], r[key]] for r in rows if _finite(r.get("step")) and _finite(r.get(key))]

    return _finite_only(
        {"object": "run", "name": model_name, **info, "train_loss": curve("loss"), "val_bpc": curve("val_bpc")}
    )


def _finite(x: object) -> bool:
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


async def read_json(request: Request, max_body: int) -> dict:
    """The request's body as a JSON object, read up to ``max_body`` bytes (413 past them, 400 if not JSON)."""
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


def _json_bytes(x: object) -> bytes:
    return json.dumps(x, ensure_ascii=False, separators=(",", ":")).encode()


def _failure(batcher: Batcher | ProcessBatcher) -> str:
    return f": {batcher.error}" if batcher.error and batcher.error != "it was closed" else ""
