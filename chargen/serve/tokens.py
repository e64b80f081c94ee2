"""``POST /tokenize`` and ``POST /detokenize``, in llama.cpp's shapes: ``{"content": "..."}`` ->
``{"tokens": [ids]}`` (``with_pieces``: ``[{"id", "piece"}]``), and ``{"tokens": [ids]}`` -> ``{"content": "..."}``.
One token is one character, with the ids of the run's vocabulary (``tokenizer.json``)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, ClassVar

from pydantic import Field, StrictBool, ValidationInfo, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import ChargenError
from .routes import _state, read_json
from .schema import ApiError, WholeNumber, _Body, _neutral, within_the_prompt_limit


class TokenizeRequest(_Body):
    """``POST /tokenize``."""

    content: str  # at most Limits.max_prompt characters
    with_pieces: StrictBool = False
    add_special: Annotated[Any, _neutral(False)] = None  # a character model has no special tokens

    WRONG: ClassVar[dict[str, str]] = {"content": "content must be a string"}

    @field_validator("content")
    @classmethod
    def _within_the_limit(cls, value: str, info: ValidationInfo) -> str:
        return within_the_prompt_limit(value, info)


class DetokenizeRequest(_Body):
    """``POST /detokenize``."""

    tokens: list[WholeNumber] = Field(max_length=1 << 16)

    WRONG: ClassVar[dict[str, str]] = {"tokens": "tokens must be a list of at most 65,536 token ids (whole numbers)"}


async def tokenize(request: Request) -> Response:
    state = _state(request)
    body = TokenizeRequest.parse(await read_json(request, state.limits.max_body), state.model_name, state.limits)
    vocab = state.sampler.vocab
    try:
        ids = await asyncio.to_thread(
            state.sampler.encode, body.content, "unk" if vocab.unk_id is not None else "error"
        )
    except ChargenError as e:
        raise ApiError(400, str(e), "content") from None
    tokens: list[Any] = ids.tolist()
    if body.with_pieces:
        tokens = [{"id": i, "piece": vocab.chars[i]} for i in tokens]
    return JSONResponse({"tokens": tokens})


async def detokenize(request: Request) -> Response:
    state = _state(request)
    body = DetokenizeRequest.parse(await read_json(request, state.limits.max_body), state.model_name, state.limits)
    chars = state.sampler.vocab.chars
    bad = next((i for i in body.tokens if not 0 <= i < len(chars)), None)
    if bad is not None:
        raise ApiError(400, f"token id {bad} is not in the vocabulary (ids 0 to {len(chars) - 1})", "tokens")
    return JSONResponse({"content": "".join(chars[i] for i in body.tokens)})
