"""The server's request bodies, declared once: each a pydantic model holding its fields' types, ranges and
defaults (:class:`CompletionRequest`, :class:`ScoreRequest`), and the one mapping of a body's mistake to
OpenAI's error object (:class:`ApiError`: ``{"error": {"message", "type", "param", "code"}}``).

What depends on the server (the served model's name, its :class:`~.state.Limits`) comes in the validation
context: :meth:`parse` passes it. Fields are checked in the order they are declared, and the first mistake
is the one reported, so each model declares its fields in the order the server has always checked them.
Only the server imports this module (pydantic is in the serve extra).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, cast, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from .state import Limits

if TYPE_CHECKING:
    from typing_extensions import Self

MAX_LOGPROBS = 5  # likeliest characters a completion may list per position (OpenAI's cap too)
LOGPROBS_CHARS = 1 << 16  # characters (rows x max_tokens) one request may ask log-probabilities for


def clip(text: str, most: int = 200) -> str:
    """``text``, its middle cut out past ``most`` characters: a message may quote what a client sent, and
    a client may send megabytes."""
    if len(text) <= most:
        return text
    keep = most // 2
    return f"{text[:keep]}...[{len(text) - 2 * keep} characters cut]...{text[-keep:]}"


class ApiError(Exception):
    """A refused request: its HTTP status and OpenAI's error object (message, type, param)."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def _refuse(message: str, param: str, status: int = 400, kind: str = "invalid_request_error") -> PydanticCustomError:
    """A check's failure in its own words, carrying its whole error object (pydantic collects it)."""
    return PydanticCustomError(
        "chargen", "{message}", {"message": message, "param": param, "status": status, "kind": kind}
    )


def _param(error: ErrorDetails) -> str:
    """The field a pydantic error is about: a check's own param, or where the error is."""
    return error["ctx"]["param"] if error["type"] == "chargen" else cast(str, error["loc"][0])  # a field's name


def _json_number(value: object) -> int | float:
    """A JSON number as sent: no text, no true or false, nothing infinite (5.0 is a whole number, "5" is none)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (isinstance(value, float) and not math.isfinite(value))
    ):
        raise ValueError("not a finite number")
    return value


def _neutral(value: object) -> AfterValidator:
    """An OpenAI field that changes nothing here: accepted at ``value`` (or null), refused at any other."""

    def check(given: object, info: ValidationInfo) -> object:
        if given is not None and given != value:
            assert info.field_name is not None  # a field's check knows its field
            raise _refuse(f"{info.field_name} is not supported by chargen (leave it out)", info.field_name)
        return given

    return AfterValidator(check)


def _not_empty(text: str) -> str:
    """Checked in Python, not with ``min_length``: a length constraint makes pydantic-core copy the string into
    Rust, which refuses a lone surrogate (half an emoji, as JavaScript slices text), and such a string is
    a string all the same: a stop that never matches, a text whose characters the vocabulary judges."""
    if not text:
        raise ValueError("empty")
    return text


WholeNumber = Annotated[int, BeforeValidator(_json_number)]
Number = Annotated[float, BeforeValidator(_json_number)]
Text = Annotated[str, AfterValidator(_not_empty)]


class _Body(BaseModel):
    """A request body: unknown fields refused, the model checked against the one served, and every other
    mistake said as what the field must be (:attr:`WRONG`, or its type and range)."""

    model_config = ConfigDict(extra="forbid")
    WRONG: ClassVar[dict[str, str]] = {}  # what a field that is neither a number nor a flag must be

    @classmethod
    def parse(cls, body: dict, model_name: str, limits: Limits) -> Self:
        """The body, checked against the served model's name and the server's limits; ApiError if wrong."""
        unknown = sorted(set(body) - set(cls.model_fields))
        if unknown:  # here, not by pydantic: a name may be no valid string (a lone surrogate)
            raise ApiError(400, f"unknown field(s): {', '.join(map(ascii, unknown))}", unknown[0])
        try:
            return cls.model_validate(body, context={"model_name": model_name, "limits": limits})
        except ValidationError as e:
            raise cls.api_error(e, body, limits) from None

    @classmethod
    def api_error(cls, error: ValidationError, body: dict, limits: Limits) -> ApiError:
        """The body's first mistake (by the field it names, in their order) as OpenAI's error: a check's own
        words, or what the field must be (with the value as sent)."""
        order = list(cls.model_fields)
        first = min(error.errors(), key=lambda e: order.index(_param(e)))
        if first["type"] == "chargen":
            ctx = first["ctx"]
            return ApiError(ctx["status"], ctx["message"], ctx["param"], ctx["kind"])
        name = _param(first)
        return ApiError(400, cls._must_be(name, body.get(name), limits), name)

    @classmethod
    def _must_be(cls, name: str, value: object, limits: Limits) -> str:
        if name in cls.WRONG:
            return cls.WRONG[name]
        annotation = cls.model_fields[name].annotation  # X, or X | None; X may be Annotated[...]
        kinds = {getattr(a, "__origin__", a) for a in (annotation, *get_args(annotation))}
        if bool in kinds:
            return f"{name} must be true or false, got {value!r}"
        low, high = cls._bounds(name, limits)
        return f"{name} must be {'a whole number' if int in kinds else 'a number'} in [{low}, {high}], got {value!r}"

    @classmethod
    def _bounds(cls, name: str, limits: Limits) -> tuple:
        """A number's [low, high]: its Field's ge and le, or the server's limit where that sets the high."""
        low = high = None
        for m in cls.model_fields[name].metadata:
            low, high = getattr(m, "ge", low), getattr(m, "le", high)
        return low, cls._limit_highs(limits).get(name, high)

    @classmethod
    def _limit_highs(cls, limits: Limits) -> dict[str, int]:
        return {}

    @field_validator("model", check_fields=False)
    @classmethod
    def _served_here(cls, value: object, info: ValidationInfo) -> object:
        assert info.context is not None  # parse passes one
        served = info.context["model_name"]
        if value != served:
            raise _refuse(
                f"model {value!a} is not served here; this server serves {served!r}", "model", 404, "not_found_error"
            )
        return value


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool = False  # end the stream with a chunk of no choices and the usage


class CompletionRequest(_Body):
    """``POST /v1/completions``: OpenAI's completion request, one token a character (fields in the order
    they are checked)."""

    # OpenAI's field that changes nothing here: accepted at its neutral value (or null), refused otherwise
    suffix: Annotated[Any, _neutral("")] = None
    model: Any = None  # any value but the served model's name is a 404
    prompt: str | Annotated[list[str], Field(min_length=1)] = ""  # Limits.max_prompts, of Limits.max_prompt
    max_tokens: WholeNumber = Field(16, ge=0)  # at most Limits.max_length
    temperature: Number = Field(1.0, ge=0.0, le=100.0)
    n: WholeNumber = Field(1, ge=1)  # at most Limits.max_n
    top_p: Number | None = Field(None, ge=0.0, le=1.0)  # and above 0
    top_k: WholeNumber | None = Field(None, ge=1, le=1 << 31)
    seed: WholeNumber | None = Field(None, ge=0, le=2**63 - 1)
    stop: Text | Annotated[list[Text], Field(max_length=4)] | None = None
    logprobs: WholeNumber | None = Field(None, ge=0, le=MAX_LOGPROBS)  # at most LOGPROBS_CHARS characters
    stream: StrictBool = False
    echo: StrictBool = False  # not with logprobs
    user: str | None = None
    stream_options: StreamOptions | None = None  # only with stream
    # the rules on the logits (generate/rules.py) and the searches (generate/search.py)
    best_of: WholeNumber | None = Field(None, ge=1)  # at least n, at most Limits.max_n; streamed only at n
    logit_bias: dict[str, Number] | None = None  # token ids, as strings -> a bias in [-100, 100]
    presence_penalty: Number = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: Number = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: Number = Field(1.0, ge=0.01, le=100.0)
    repeat_last_n: WholeNumber = Field(64, ge=-1, le=1 << 31)
    min_p: Number | None = Field(None, ge=0.0, le=1.0)
    beam: WholeNumber | None = Field(None, ge=1, le=64)  # chargen's own: a beam search of this width

    WRONG: ClassVar[dict[str, str]] = {
        "prompt": "prompt must be a string or a non-empty list of strings",
        "stop": "stop must be a non-empty string or a list of at most 4 of them",
        "user": "user must be a string",
        "stream_options": 'stream_options may only be {"include_usage": true or false}',
        "logit_bias": 'logit_bias must map token ids (as strings) to numbers in [-100, 100], such as {"12": -100}',
    }

    @classmethod
    def _limit_highs(cls, limits: Limits) -> dict[str, int]:
        return {"max_tokens": limits.max_length, "n": limits.max_n, "best_of": limits.max_n}

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt

    @property
    def rows(self) -> int:
        """Rows drawn for each prompt: ``best_of`` when it is more than ``n``."""
        return max(self.n, self.best_of or 1)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def sample_settings(self) -> dict[str, Any]:
        """The sampler's settings for each prompt, as ``Batcher.submit`` takes them (logprobs aside)."""
        settings: dict[str, Any] = {"length": self.max_tokens, "temperature": self.temperature, "n": self.n}
        for name in ("top_p", "top_k", "seed"):  # left out when not given: the sampler's own default
            if getattr(self, name) is not None:
                settings[name] = getattr(self, name)
        if self.stop is not None:
            settings["stop"] = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        for name in ("presence_penalty", "frequency_penalty", "repetition_penalty", "repeat_last_n"):
            settings[name] = getattr(self, name)
        for name in ("min_p", "beam"):
            if getattr(self, name) is not None:
                settings[name] = getattr(self, name)
        return settings

    @field_validator(
        "max_tokens",
        "temperature",
        "n",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "repeat_last_n",
        mode="before",
    )
    @classmethod
    def _null_is_the_default(cls, value: object, info: ValidationInfo) -> object:
        assert info.field_name is not None  # a field's check knows its field
        return cls.model_fields[info.field_name].default if value is None else value

    @field_validator("max_tokens", "n", "best_of")
    @classmethod
    def _within_the_limit(cls, value: int | None, info: ValidationInfo) -> int | None:
        assert info.context is not None and info.field_name is not None  # parse passes one; a field knows its name
        if value is not None and value > cls._limit_highs(info.context["limits"])[info.field_name]:
            raise ValueError("above the server's limit")  # said as the field's range
        return value

    @field_validator("best_of")
    @classmethod
    def _best_of_at_least_n(cls, value: int | None, info: ValidationInfo) -> int | None:
        n = info.data.get("n")
        if value is not None and n is not None and value < n:
            raise _refuse(f"best_of ({value}) must be at least n ({n})", "best_of")
        if value is not None and n is not None and value > n and info.data.get("stream"):
            raise _refuse("best_of larger than n cannot be streamed: the best are known only at the end", "best_of")
        got = info.data
        if value is not None and got.get("logprobs") is not None and {"prompt", "max_tokens"} <= set(got):
            chars = (
                len([got["prompt"]] if isinstance(got["prompt"], str) else got["prompt"]) * value * got["max_tokens"]
            )
            if chars > LOGPROBS_CHARS:
                raise _refuse(
                    f"logprobs for {chars:,} characters (prompts x best_of x max_tokens); at most "
                    f"{LOGPROBS_CHARS:,} per request",
                    "logprobs",
                )
        return value

    @field_validator("logit_bias")
    @classmethod
    def _biases_in_range(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            if not -100 <= bias <= 100:
                raise _refuse(f"logit_bias[{clip(key)!r}] must be in [-100, 100], got {bias!r}", "logit_bias")
        return value

    @field_validator("beam")
    @classmethod
    def _beam_alone(cls, value: int | None, info: ValidationInfo) -> int | None:
        got = info.data
        if value is None:
            return value
        if got.get("stream"):
            raise _refuse("beam cannot be streamed: the best continuation is known only at the end", "beam")
        if got.get("logprobs") is not None:
            raise _refuse("logprobs is not supported with beam", "beam")
        if got.get("n") is not None and got["n"] > value:
            raise _refuse(f"n ({got['n']}) must be at most beam ({value})", "beam")
        if (got.get("best_of") or 1) > 1:
            raise _refuse("best_of draws samples and beam searches without drawing: send one of them", "beam")
        return value

    @field_validator("prompt")
    @classmethod
    def _prompts_within_the_limits(cls, value: str | list[str], info: ValidationInfo) -> str | list[str]:
        assert info.context is not None  # parse passes one
        limits: Limits = info.context["limits"]
        prompts = [value] if isinstance(value, str) else value
        if len(prompts) > limits.max_prompts:
            raise _refuse(f"at most {limits.max_prompts} prompts per request, got {len(prompts)}", "prompt")
        if any(len(p) > limits.max_prompt for p in prompts):
            raise _refuse(f"a prompt is longer than {limits.max_prompt:,} characters", "prompt")
        return value

    @field_validator("top_p")
    @classmethod
    def _top_p_above_0(cls, value: float | None) -> float | None:
        if value == 0.0:
            raise _refuse("top_p must be greater than 0", "top_p")
        return value

    @field_validator("logprobs")
    @classmethod
    def _logprobs_within_the_cap(cls, value: int | None, info: ValidationInfo) -> int | None:
        got = info.data  # the fields checked before this one, those that passed (the others are reported)
        if value is not None and {"prompt", "n", "max_tokens"} <= set(got):
            chars = (
                len([got["prompt"]] if isinstance(got["prompt"], str) else got["prompt"]) * got["n"] * got["max_tokens"]
            )
            if chars > LOGPROBS_CHARS:
                raise _refuse(
                    f"logprobs for {chars:,} characters (prompts x n x max_tokens); at most "
                    f"{LOGPROBS_CHARS:,} per request",
                    "logprobs",
                )
        return value

    @field_validator("echo", mode="before")
    @classmethod
    def _echo_without_logprobs(cls, value: object, info: ValidationInfo) -> object:
        if value and info.data.get("logprobs") is not None:  # any echo that is not false: a mistake either way
            raise _refuse("logprobs with echo is not supported: score the prompt with POST /v1/score", "logprobs")
        return value

    @field_validator("stream_options", mode="before")
    @classmethod
    def _only_when_streaming(cls, value: object, info: ValidationInfo) -> object:
        if value is not None and info.data.get("stream") is False:
            raise _refuse("stream_options is only for stream: true", "stream_options")
        return value


class ScoreRequest(_Body):
    """``POST /v1/score``: the loss of a text under the model (chargen's own route)."""

    model: Any = None  # any value but the served model's name is a 404
    text: Text  # at most Limits.max_prompt characters
    logprobs: StrictBool = False  # also each character's log-probability

    WRONG: ClassVar[dict[str, str]] = {"text": "text must be a non-empty string"}

    @field_validator("text")
    @classmethod
    def _within_the_limit(cls, value: str, info: ValidationInfo) -> str:
        return within_the_prompt_limit(value, info, "are scored (chargen eval scores whole files)")


def within_the_prompt_limit(value: str, info: ValidationInfo, note: str = "") -> str:
    """A text field's check: at most ``Limits.max_prompt`` characters (``note`` ends the refusal)."""
    assert info.context is not None and info.field_name is not None  # parse passes one; a field knows its name
    limits: Limits = info.context["limits"]
    if len(value) > limits.max_prompt:
        most = f"at most {limits.max_prompt:,} {note}".rstrip()
        raise _refuse(f"{info.field_name} is {len(value):,} characters; {most}", info.field_name)
    return value
