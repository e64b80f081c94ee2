"""``SampleOptions``: how to sample, and the one default temperature."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ChargenError
from .options import check_fields, option

DEFAULT_TEMPERATURE = 0.8  # the one default: the CLI, the Python API and training previews


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

    def __post_init__(self) -> None:
        if isinstance(self.stop, str) or self.stop is None:
            self.stop = () if self.stop is None else (self.stop,)
        elif isinstance(self.stop, (list, tuple)):
            self.stop = tuple(self.stop)
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ChargenError("stop strings must be non-empty text")
        check_fields(self, by="name")
