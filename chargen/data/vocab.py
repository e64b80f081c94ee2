"""The character vocabulary, stored as a ``tokenizers`` tokenizer.

One token per Unicode code point: a ``Split`` pre-tokenizer isolates every
character, a ``WordLevel`` model maps it to its id, and a ``Fuse`` decoder
joins tokens back without adding spaces, so ``decode(encode(text)) == text``
for any text whose characters are in the vocabulary. Normalization (NFC,
NFKC, lowercasing) is the tokenizer's normalizer, so whatever loads
``tokenizer.json`` normalizes prompts exactly as the corpus was normalized.

Ids are assigned in code-point order; ``UNK`` (id 0, present only when some
character of the corpus is left out) stands for characters outside the
vocabulary. It is a multi-character string, so no single character of the
text can ever collide with it.

For bulk work :meth:`CharVocab.encode_array` maps code points through a lookup
table with numpy instead of calling ``tokenizers``; a test proves the ids are
the same.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from ..config import NORMALIZE_CHOICES
from ..errors import ChargenError
from ..files import atomic_write

if TYPE_CHECKING:
    import torch

UNK = "<unk>"
MAX_CODEPOINT = 0x10FFFF


def make_normalizer(normalize: str = "none", lowercase: bool = False) -> normalizers.Normalizer | None:
    """The ``tokenizers`` normalizer for these options, or None for the identity."""
    if normalize not in NORMALIZE_CHOICES:
        raise ChargenError(f"unknown normalization {normalize!r}; choose one of {', '.join(NORMALIZE_CHOICES)}")
    table: dict[str, list[normalizers.Normalizer]] = {
        "nfc": [normalizers.NFC()],
        "nfkc": [normalizers.NFKC()],
        "none": [],
    }
    steps = table[normalize]
    if lowercase:
        steps.append(normalizers.Lowercase())
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else normalizers.Sequence(steps)


def codepoints(text: str) -> np.ndarray:
    """The code points of ``text`` as a uint32 array.

    numpy copies a str into its UCS-4 array type in one pass, about 20x faster
    than ``text.encode("utf-32")``; trailing NULs are kept by the view.
    """
    if not text:
        return np.zeros(0, dtype=np.uint32)
    return np.array([text]).view(np.uint32)


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds ids ``0 .. vocab_size - 1``."""
    return np.min_scalar_type(max(vocab_size - 1, 0))


class CharVocab:
    """A character vocabulary: ``tokenizers`` for interchange, numpy for speed."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        vocab = tokenizer.get_vocab(with_added_tokens=False)
        size = len(vocab)
        if sorted(vocab.values()) != list(range(size)):
            raise ChargenError("tokenizer.json has gaps in its ids; it was not written by chargen")
        self.unk_id: int | None = vocab.get(UNK)
        chars = [""] * size
        for token, i in vocab.items():
            if token != UNK and len(token) != 1:
                raise ChargenError(
                    f"tokenizer.json holds the multi-character token {token!r}; "
                    "chargen needs a character vocabulary it wrote itself"
                )
            chars[i] = token
        self.chars: list[str] = chars  # id -> character (UNK -> "<unk>", as tokenizers decodes it)
        self._lut: np.ndarray | None = None
        self._cp_table: np.ndarray | None = None
        self._norm = tokenizer.normalizer

    def __getstate__(self) -> dict:
        """Pickled without its lookup tables (4 MB for the code-point table), which are made again on use."""
        return {**self.__dict__, "_lut": None, "_cp_table": None}

    # -- construction -------------------------------------------------------

    @classmethod
    def build(
        cls, chars: Iterable[str], *, with_unk: bool, normalize: str = "none", lowercase: bool = False
    ) -> CharVocab:
        """A vocabulary of ``chars`` (any order; stored in code-point order)."""
        ordered = sorted(set(chars))
        return cls.from_tokens(([UNK] if with_unk else []) + ordered, normalize=normalize, lowercase=lowercase)

    @classmethod
    def from_tokens(cls, tokens: list[str], *, normalize: str = "none", lowercase: bool = False) -> CharVocab:
        """A vocabulary of ``tokens`` in this order (characters, and ``<unk>`` anywhere or nowhere)."""
        with_unk = UNK in tokens
        model = models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=UNK if with_unk else None)
        tok = Tokenizer(model)
        norm = make_normalizer(normalize, lowercase)
        if norm is not None:
            tok.normalizer = norm
        # [\s\S] rather than "." so that newlines are characters too.
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tok.decoder = decoders.Fuse()
        return cls(tok)

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharVocab:
        """Load ``tokenizer.json``; a file that is not a chargen vocabulary is a ChargenError."""
        if not os.path.isfile(path):
            raise ChargenError(f"{path} is missing; the run or cache folder is incomplete")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:
            raise ChargenError(
                f"{path} is not a readable tokenizer ({str(e).splitlines()[0] if str(e) else e!r}); "
                "the file is corrupt: prepare or train again"
            ) from None
        if type(tok.model).__name__ != "WordLevel":
            raise ChargenError(f"{path} is not a chargen character vocabulary")
        try:
            return cls(tok)
        except ChargenError as e:  # the checks of a vocabulary, named with the file's whole path
            raise ChargenError(str(e).replace("tokenizer.json", str(path), 1)) from None

    def save(self, path: str | os.PathLike) -> None:
        """Write ``tokenizer.json`` atomically (temporary name, then rename)."""
        with atomic_write(path) as tmp:
            self.tokenizer.save(str(tmp), pretty=True)

    # -- properties ---------------------------------------------------------

    def __len__(self) -> int:
        return len(self.chars)

    @property
    def dtype(self) -> np.dtype:
        """Smallest unsigned dtype for this vocabulary's ids."""
        return id_dtype(len(self))

    @property
    def start_id(self) -> int:
        """The id fed before a text with no context: newline, which starts lines and documents
        (id 0 when the vocabulary has no newline)."""
        return self.chars.index("\n") if "\n" in self.chars else 0

    def normalize(self, text: str) -> str:
        """Apply the vocabulary's normalizer (NFC/NFKC/lowercase), if any."""
        if self._norm is None:
            return text
        try:
            return self._norm.normalize_str(text)
        except UnicodeEncodeError:  # lone surrogates: how Python carries bytes that were not UTF-8
            raise ChargenError(
                "the text is not valid Unicode (it holds bytes that were not UTF-8, or a lone "
                "surrogate); pass UTF-8 text"
            ) from None

    def unknown_chars(self, text: str) -> list[str]:
        """Distinct characters of ``text`` (after normalization) outside the vocabulary."""
        cps = np.unique(codepoints(self.normalize(text)))
        known = self.lut[cps] != self._missing
        return [chr(c) for c in cps[~known]]

    # -- encode / decode ----------------------------------------------------

    @property
    def lut(self) -> np.ndarray:
        """Code point -> id table (``_missing`` where a code point is unknown)."""
        if self._lut is None:
            lut = np.full(MAX_CODEPOINT + 1, self._missing, dtype=np.uint32)
            for i, c in enumerate(self.chars):
                if i != self.unk_id:
                    lut[ord(c)] = i
            self._lut = lut
        return self._lut

    @property
    def _missing(self) -> int:
        return self.unk_id if self.unk_id is not None else np.iinfo(np.uint32).max

    def encode(self, text: str) -> list[int]:
        """Ids through ``tokenizers`` itself (normalizes first). Unknown characters
        become UNK, or raise ChargenError when the vocabulary has none."""
        if self.unk_id is None:
            self.check_known(text)
        return self.tokenizer.encode(text).ids

    def encode_array(
        self, text: str, *, normalized: bool = False, strict: bool = False, dtype: npt.DTypeLike | None = None
    ) -> np.ndarray:
        """Vectorized ids of ``text``: the same ids as :meth:`encode`.

        ``normalized=True`` skips normalization (the caller already did it).
        Unknown characters become UNK; without UNK, or with ``strict=True``,
        they raise ChargenError.
        """
        if not normalized:
            text = self.normalize(text)
        ids = self.lut[codepoints(text)]
        if ids.size and (strict or self.unk_id is None) and (ids == self._missing).any():
            self.check_known(text)
        return ids.astype(dtype or self.dtype, copy=False)

    def encode_known(self, text: str) -> np.ndarray:
        """Ids of ``text`` (normalized first) as int64, -1 for every character outside the vocabulary and for
        the unknown token: ids that match only the characters they are."""
        ids = self.lut[codepoints(self.normalize(text))].astype(np.int64)
        ids[ids == self._missing] = -1
        return ids

    def check_known(self, text: str) -> None:
        """Raise ChargenError naming the characters of ``text`` outside the vocabulary, if any."""
        missing = self.unknown_chars(text)
        if not missing:
            return
        hint = (
            "pass unknown='unk' (--unknown unk) to map them to the unknown token"
            if self.unk_id is not None
            else "remove them: this vocabulary has no unknown token"
        )
        raise ChargenError(f"characters not in the vocabulary: {_show(missing)}; {hint}")

    def decode(self, ids: npt.ArrayLike | torch.Tensor) -> str:
        """Text of ``ids``, exactly as ``tokenizers`` decodes them (UNK -> "<unk>")."""
        ids = np.asarray(ids.cpu() if hasattr(ids, "cpu") else ids, dtype=np.int64).ravel()
        if self.unk_id is not None and np.any(ids == self.unk_id):
            chars = self.chars  # "<unk>" is five characters: no one-code-point table for it
            return "".join(chars[i] for i in ids.tolist())
        # One code point per id: a table lookup and one UTF-32 decode, no per-character Python.
        return self._codepoints[ids].tobytes().decode("utf-32-le")

    @property
    def _codepoints(self) -> np.ndarray:
        if self._cp_table is None:
            self._cp_table = np.array(
                [ord(c) if i != self.unk_id else 0 for i, c in enumerate(self.chars)], dtype="<u4"
            )
        return self._cp_table


def _show(chars: list[str], limit: int = 10) -> str:
    shown = " ".join(repr(c) for c in chars[:limit])
    return shown + (f" and {len(chars) - limit} more" if len(chars) > limit else "")
