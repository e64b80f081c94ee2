"""``SampleOptions``: how to sample, and the one default temperature."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ChargenError
from .options import check_fields, option

DEFAULT_TEMPERATURE = 0.8  # the one default: the CLI, the Python API and training previews
RULES = "rules on the logits (applied in this order before temperature; min-p last)"
SEARCH = "searching: best of several samples, or a beam"


def parse_bias(text: str) -> tuple[str, float]:
    """``"e=-5"`` -> ("e", -5.0): one character (``\\n``, ``\\t``, ``\\r``, ``\\\\`` escapes, and ``==1`` for
    "="), then ``=`` and a number."""
    char, sep, number = text.rpartition("=")
    char = {"\\n": "\n", "\\t": "\t", "\\r": "\r", "\\\\": "\\"}.get(char, char)
    if not sep or len(char) != 1:
        raise ChargenError(f"must be CHAR=BIAS with one character, such as e=-5 or \\n=2, got {text!r}")
    try:
        return char, float(number)
    except ValueError:
        raise ChargenError(f"must be CHAR=BIAS with a number for BIAS, got {text!r}") from None


@dataclass
class SampleOptions:
    """How to sample: one validated set of options for ``Sampler.generate``/``stream`` and the CLI."""

    length: int = option(500, "characters to generate", minimum=0, metavar="N")
    temperature: float = option(DEFAULT_TEMPERATURE, "softmax temperature; 0 is greedy", minimum=0.0, metavar="T")
    top_k: int | None = option(None, "sample from the K likeliest characters", minimum=1, metavar="K")
    top_p: float | None = option(
        None, "sample from the smallest set whose probability reaches P", above=0.0, maximum=1.0, metavar="P"
    )
    stop: tuple[str, ...] = option(
        (), "stop when TEXT appears (not printed; repeatable; \\n escapes allowed)", metavar="TEXT"
    )
    n: int = option(1, "samples, decoded together in one batch", minimum=1, maximum=1 << 16, metavar="N")
    seed: int | None = option(None, "same seed, same text (default: random)", minimum=0, maximum=2**63 - 1)
    unknown: str = option(
        "error", "prompt characters outside the vocabulary: an error, or the unknown token", choices=("error", "unk")
    )
    min_p: float | None = option(
        None,
        "keep the characters at least P times as likely as the likeliest; 1 is greedy",
        minimum=0.0,
        maximum=1.0,
        metavar="P",
        group=RULES,
    )
    presence_penalty: float = option(
        0.0,
        "subtract P from characters already generated (OpenAI's)",
        minimum=-2.0,
        maximum=2.0,
        metavar="P",
        group=RULES,
    )
    frequency_penalty: float = option(
        0.0,
        "subtract P per time a character was already generated (OpenAI's)",
        minimum=-2.0,
        maximum=2.0,
        metavar="P",
        group=RULES,
    )
    repetition_penalty: float = option(
        1.0,
        "divide positive (multiply negative) logits of characters among the last --repeat-last-n by R",
        minimum=0.01,
        maximum=100.0,
        metavar="R",
        group=RULES,
    )
    repeat_last_n: int = option(
        64,
        "the characters --repetition-penalty looks back at, prompt included; -1 all, 0 none",
        minimum=-1,
        metavar="N",
        group=RULES,
    )
    logit_bias: dict[str, float] | None = option(
        None,
        "add BIAS to CHAR's logit (repeatable; -100 bans it; \\n escapes allowed)",
        minimum=-100.0,
        maximum=100.0,
        metavar="CHAR=BIAS",
        group=RULES,
        parse=parse_bias,
    )
    best_of: int | None = option(
        None,
        "draw N samples and keep the n likeliest (by total log-probability)",
        minimum=1,
        maximum=1 << 16,
        metavar="N",
        group=SEARCH,
    )
    beam: int | None = option(
        None,
        "beam search of width W: the likeliest continuation; 1 is greedy (no draws: temperature, top-k, "
        "top-p, min-p and seed do not apply)",
        minimum=1,
        maximum=1 << 10,
        metavar="W",
        group=SEARCH,
    )

    def __post_init__(self) -> None:
        if isinstance(self.stop, str) or self.stop is None:
            self.stop = () if self.stop is None else (self.stop,)
        elif isinstance(self.stop, (list, tuple)):
            self.stop = tuple(self.stop)
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ChargenError("stop strings must be non-empty text")
        bias = self.logit_bias
        if isinstance(bias, (list, tuple)) and all(isinstance(p, tuple) and len(p) == 2 for p in bias):
            twice = sorted({c for c, _ in bias if sum(c == d for d, _ in bias) > 1})
            if twice:
                raise ChargenError(f"logit_bias names {twice[0]!r} twice; give each character one bias")
            self.logit_bias = dict(bias)  # (character, bias) pairs, as the command line gives them
        check_fields(self, by="name")
        if self.best_of is not None and self.best_of < self.n:
            raise ChargenError(f"best_of ({self.best_of}) must be at least n ({self.n}): it draws best_of and keeps n")
        if self.beam is not None:
            if self.n > self.beam:
                raise ChargenError(f"n ({self.n}) must be at most beam ({self.beam}): a beam search keeps beam texts")
            if self.best_of is not None:
                raise ChargenError("best_of draws samples and beam searches without drawing: pass one of them")

    @property
    def greedy(self) -> bool:
        """Whether each character is the likeliest one (no draw): temperature 0, top-k 1 or min-p 1."""
        return self.temperature == 0 or self.top_k == 1 or self.min_p == 1

    @property
    def rules(self) -> bool:
        """Whether any rule changes the logits before the draw (bias, penalties)."""
        return (
            bool(self.logit_bias)
            or self.presence_penalty != 0
            or self.frequency_penalty != 0
            or (self.repetition_penalty != 1 and self.repeat_last_n != 0)
        )
