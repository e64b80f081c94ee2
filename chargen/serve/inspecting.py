"""``POST /v1/inspect``: what the network sees reading a text (``generate/inspect.py``), as the JSON of
``chargen inspect --format json``; and the view the page draws it with (``GET /inspect.js``, ``/inspect.css``,
the same files the HTML report holds)."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from pydantic import Field, ValidationInfo, field_validator
from starlette.requests import Request
from starlette.responses import Response

from ..errors import ChargenError
from .routes import _json_bytes, _state, _take_turn, read_json
from .schema import ApiError, Text, WholeNumber, _Body, within_the_prompt_limit

MAX_VALUES = 1 << 21  # unit activations one answer may hold (a few tens of MB of JSON)


class InspectRequest(_Body):
    """``POST /v1/inspect``."""

    model: Any = None  # any value but the served model's name is a 404
    text: Text  # at most Limits.max_prompt characters
    top: WholeNumber = Field(5, ge=1, le=20)
    layers: list[WholeNumber] | None = Field(None, max_length=64)  # all by default
    units: list[WholeNumber] | None = Field(None, max_length=1 << 14)  # all by default; [] keeps none

    WRONG: ClassVar[dict[str, str]] = {
        "text": "text must be a non-empty string",
        "layers": "layers must be a list of layer numbers (from 0)",
        "units": "units must be a list of unit numbers (from 0), or [] for none",
    }

    @field_validator("text")
    @classmethod
    def _within_the_limit(cls, value: str, info: ValidationInfo) -> str:
        return within_the_prompt_limit(value, info)


async def inspect(request: Request) -> Response:
    """The inspection of a text, one at a time (as scores: its activations take memory)."""
    state = _state(request)
    body = InspectRequest.parse(await read_json(request, state.limits.max_body), state.model_name, state.limits)
    sampler = state.sampler
    config = getattr(sampler.runtime.step, "config", None) or sampler.model.config
    layers = len(body.layers) if body.layers is not None else config.num_layers
    units = len(body.units) if body.units is not None else config.hidden_size
    kept = len(body.text) * layers * units * (2 if config.cell == "lstm" else 1)
    if kept > MAX_VALUES:
        raise ApiError(
            400,
            f"that keeps {kept:,} unit activations; at most {MAX_VALUES:,} per request: choose fewer layers or "
            "units (units: [] keeps none), or a shorter text",
            "units",
        )
    if state.scoring.locked() and state.scores_waiting >= state.limits.max_prompts:
        raise ApiError(429, "the server is busy; try again soon", kind="rate_limit_error")
    if not await _take_turn(state, request):
        return Response(status_code=499)
    try:
        found = await asyncio.to_thread(sampler.inspect, body.text, top=body.top, layers=body.layers, units=body.units)
        data = await asyncio.to_thread(lambda: _json_bytes(found.to_json()))
    except ChargenError as e:
        message = str(e)
        raise ApiError(400, message, next((p for p in ("layers", "units") if message.startswith(p)), "text")) from None
    finally:
        state.scoring.release()
    return Response(data, media_type="application/json")


async def asset(request: Request) -> Response:
    """``GET /inspect.js`` and ``/inspect.css``: the inspection's view, shipped in the package."""
    from ..generate.report import asset as read

    name = request.url.path.lstrip("/")
    kind = "text/javascript" if name.endswith(".js") else "text/css"
    return Response(read(name), media_type=f"{kind}; charset=utf-8", headers={"Cache-Control": "no-cache"})
