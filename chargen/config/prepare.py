"""``PrepareOptions``: every option that changes a corpus's ids, hence part of its cache fingerprint."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ChargenError
from .options import check_fields, option

NORMALIZE_CHOICES = ("none", "nfc", "nfkc")
ERRORS_CHOICES = ("strict", "replace", "ignore")


@dataclass(frozen=True)
class PrepareOptions:
    """Every option that changes the ids, hence part of the fingerprint."""

    val_fraction: float | None = option(
        None,
        "share of the text, after the training part, that validates (default: the corpus's registry split, else 0.1)",
        minimum=0.0,
        below=1.0,
        metavar="F",
        group="corpus",
    )
    test_fraction: float | None = option(
        None,
        "share at the very end held out for testing (default 0)",
        minimum=0.0,
        below=1.0,
        metavar="F",
        group="corpus",
    )
    normalize: str = option(
        "none", "Unicode normalization applied before anything else", choices=NORMALIZE_CHOICES, group="corpus"
    )
    lowercase: bool = option(False, "lowercase the text", group="corpus")
    min_char_count: int = option(
        1,
        "characters seen fewer than N times in training become the unknown token",
        minimum=1,
        metavar="N",
        group="corpus",
    )
    encoding: str = option("utf-8", "text encoding of the files", group="corpus")
    errors: str = option(
        "strict",
        "what to do with undecodable bytes; strict stops at the first, naming its offset",
        choices=ERRORS_CHOICES,
        group="corpus",
    )
    text_column: str = option("text", "column holding the text, for hf: sources", metavar="COL", group="corpus")
    # Not flags: set by --init-from. The base run's tokens in id order, which keep their ids; the
    # corpus's other characters are added after them, or, with ``vocab_grow`` off, become the unknown token.
    vocab_base: list[str] | None = None
    vocab_grow: bool = True

    def __post_init__(self) -> None:
        check_fields(self)
        if self.vocab_base is not None and not (
            isinstance(self.vocab_base, list)
            and self.vocab_base
            and all(isinstance(t, str) and t for t in self.vocab_base)
        ):
            raise ChargenError("vocab_base must be a non-empty list of tokens (a base run's vocabulary)")
        if (self.val_fraction or 0) + (self.test_fraction or 0) >= 1.0:
            raise ChargenError("--val-fraction plus --test-fraction must be below 1, leaving text to train on")
        try:
            "\n".encode(self.encoding)  # also refuses codecs that are not text encodings (rot13, hex)
        except LookupError as e:
            what = "is not a text encoding" if "text encoding" in str(e) else "is an unknown encoding"
            raise ChargenError(f"{self.encoding!r} {what}; use a Python codec name such as utf-8 or latin-1") from None
