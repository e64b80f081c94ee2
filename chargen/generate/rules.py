"""The rules on the logits before each draw: logit bias, repetition penalty, presence and frequency penalties.

For a row's logits ``x`` (float64), in the order applied:

1. ``logit_bias``: ``x[c] += bias[c]``; a bias of -100 (the least) bans ``c`` outright (``x[c] = -inf``), so
   that it is never drawn at any temperature.
2. ``repetition_penalty`` R (vLLM's and llama.cpp's): for every character ``c`` among the last
   ``repeat_last_n`` characters, prompt included (-1: all of them, 0: none), ``x[c] = x[c] / R`` if
   ``x[c] > 0``, else ``x[c] * R``.
3. ``presence_penalty`` P and ``frequency_penalty`` F (OpenAI's): ``x[c] -= F * count[c] + P * (count[c] > 0)``,
   ``count`` over the characters generated so far in this completion (the prompt not counted).

The draw then bans the unknown token and applies temperature, top-k, top-p and min-p (``pick``). With the
adaptive softmax the logits are log-probabilities, and the rules apply to them as they are.

Neutral values (bias 0, R 1, P 0, F 0) change no logit at all (``x + 0``, ``x / 1`` and ``x - 0`` are exact),
so rows with and without rules share one batch. :class:`History` is written once for both backends: its
arithmetic reads the same on NumPy arrays and torch tensors, and :class:`ArrayOps` supplies the three
functions that are spelled differently. So the two backends apply the rules with the same float64
operations, and give the same text per seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ChargenError

if TYPE_CHECKING:
    from ..config import SampleOptions
    from ..data.vocab import CharVocab

__all__ = ["BAN", "NUMPY_OPS", "ArrayOps", "History", "bias_vector", "start_history"]

BAN = -100.0  # the least bias: the character is never drawn
_NEVER = -(1 << 63)  # the position of a character not seen yet: outside every window
_ALL = 1 << 62  # the span of repeat_last_n = -1: every character so far


@dataclass(frozen=True)
class ArrayOps:
    """What :class:`History` needs from a backend beyond arithmetic: host arrays put where the logits are and
    read back, the logits seen as such arrays, concatenation along the rows, and the repetition penalty's kernel."""

    put: Callable[[np.ndarray], Any]
    host: Callable[[Any], np.ndarray]
    view: Callable[[Any], Any]  # the backend's logits as the arrays' kind (no copy)
    cat: Callable[[list], Any]
    penalize: Callable[[Any, Any, Any], Any]  # (x, seen, rep): x / rep where x > 0, else x * rep, where seen
    back: Callable[[Any], Any] = lambda x: x  # adjusted logits (float64) as the backend's pick takes them
    ids: Callable[[Any], Any] = lambda x: x  # the backend's drawn ids as the arrays' index
    on_host: bool = False  # the arrays are NumPy's (one row is then updated by scalars)


def _penalize(x: np.ndarray, seen: np.ndarray, rep: np.ndarray) -> np.ndarray:
    """The repetition penalty in place, in four operations (torch_ops spells it with ``where``)."""
    t = x * rep
    np.divide(x, rep, out=t, where=x > 0)
    np.copyto(x, t, where=seen)
    return x


NUMPY_OPS = ArrayOps(
    put=lambda a: a, host=np.asarray, view=lambda x: x, cat=np.concatenate, penalize=_penalize, on_host=True
)


def bias_vector(logit_bias: dict[str, float] | None, vocab: CharVocab) -> np.ndarray | None:
    """The bias of every id (V,) float64 (-inf where banned), or None when there is none. A character the
    vocabulary lacks is a ChargenError, as is a bias that bans every character."""
    if not logit_bias:
        return None
    out = np.zeros(len(vocab), dtype=np.float64)
    ids = vocab.encode_known("".join(logit_bias))
    for (char, bias), i in zip(logit_bias.items(), ids):
        if i < 0:
            raise ChargenError(f"logit_bias names {char!r}, which is not in the model's vocabulary")
        out[i] = -np.inf if bias <= BAN else bias
    allowed = np.isfinite(out)
    if vocab.unk_id is not None:
        allowed[vocab.unk_id] = False
    if not allowed.any():
        raise ChargenError("logit_bias bans every character of the vocabulary; leave at least one")
    return out


def start_history(
    ops: ArrayOps, opts: SampleOptions, vocab: CharVocab, prompt_ids: np.ndarray, batch: int
) -> History | None:
    """The history of ``batch`` rows continuing ``prompt_ids`` under ``opts``' rules; None without a rule."""
    if not opts.rules:
        return None
    return History.start(ops, opts, bias_vector(opts.logit_bias, vocab), prompt_ids, len(vocab), batch)


class History:
    """Per row: where each character was last seen and how often it was generated, and the row's rule
    settings; :meth:`adjust` applies the rules to a step's logits, :meth:`update` records the drawn ids.
    Rows are selected and joined like a batch's state (:meth:`select`, :meth:`join`).

    Kept so that a step costs a few array operations: the presence and frequency penalty of each character
    (``pen``) changes only where a character is drawn, and without a repetition penalty the bias and the
    penalties are one offset (``off = bias - pen``), added at once."""

    def __init__(self, ops: ArrayOps, arrays: dict[str, Any]):
        self.ops, self.a = ops, arrays
        self.rows = ops.put(np.arange(len(arrays["pos"])))
        host = {k: ops.host(arrays[k]) for k in ("span", "rep", "pres", "freq")}
        self.any_rep = bool(((host["rep"] != 1) & (host["span"] > 0)).any())
        # one row on the host: its updates are Python scalars, not fancy indexing (a few times faster)
        self.scalars = ops.on_host and len(host["rep"]) == 1
        self.any_pen = bool(((host["pres"] != 0) | (host["freq"] != 0)).any())
        if self.scalars:
            self._scalars(arrays, host)

    def _scalars(self, arrays: dict[str, np.ndarray], host: dict[str, np.ndarray]) -> None:
        """Row 0's views and settings as scalars, and its window kept as it slides: ``seen`` (V,) and the
        character last seen at each position still inside it (``at``)."""
        self.settings = [float(host[k][0, 0]) for k in ("pres", "freq")]
        self.span = int(host["span"][0, 0])
        self.row0 = [arrays[k][0] for k in ("counts", "pen", "off", "bias", "last", "pos")]
        last, pos = arrays["last"][0], int(arrays["pos"][0, 0])
        self.seen = (last >= pos - self.span)[None, :]
        self.at = {int(last[c]): int(c) for c in np.flatnonzero(self.seen[0])}

    @classmethod
    def start(
        cls,
        ops: ArrayOps,
        opts: SampleOptions,
        bias: np.ndarray | None,
        prompt_ids: Sequence[int] | np.ndarray,
        vocab_size: int,
        batch: int,
    ) -> History:
        """The history of ``batch`` rows that continue ``prompt_ids`` under ``opts``' rules."""
        prompt = np.asarray(prompt_ids, dtype=np.int64)
        seen = np.full(vocab_size, _NEVER, dtype=np.int64)
        np.maximum.at(seen, prompt, np.arange(prompt.size))  # each character's last position in the prompt
        span = {-1: _ALL}.get(opts.repeat_last_n, opts.repeat_last_n)

        def column(value: float, dtype: type = np.float64) -> np.ndarray:
            return np.full((batch, 1), value, dtype=dtype)

        bias_rows = np.zeros((batch, vocab_size)) if bias is None else np.repeat(bias[None, :], batch, axis=0)
        arrays = {
            "bias": bias_rows,
            "off": bias_rows.copy(),  # bias - pen
            "pen": np.zeros((batch, vocab_size)),  # freq * count + pres * (count > 0)
            "counts": np.zeros((batch, vocab_size)),  # of each character generated
            "last": np.repeat(seen[None, :], batch, axis=0),  # where each character was last, prompt included
            "pos": column(prompt.size, np.int64),  # the position of the next character
            "span": column(span, np.int64),
            "rep": column(opts.repetition_penalty),
            "pres": column(opts.presence_penalty),
            "freq": column(opts.frequency_penalty),
        }
        return cls(ops, {k: ops.put(v) for k, v in arrays.items()})

    def adjust(self, logits: Any) -> Any:
        """The logits (B, V) under the rules, float64 (the float32 logits are widened by the first addition)."""
        a, x = self.a, self.ops.view(logits)
        if not self.any_rep:
            return self.ops.back(x + a["off"])
        x = x + a["bias"]
        seen = self.seen if self.scalars else a["last"] >= a["pos"] - a["span"]  # within the last span characters
        x = self.ops.penalize(x, seen, a["rep"])
        return self.ops.back(x - a["pen"] if self.any_pen else x)

    def update(self, ids: Any) -> None:
        """Record the ids (B,) just drawn: what the rows' rules read (nothing for a bias alone)."""
        if self.scalars:
            self._update_row(int(ids[0]))
            return
        a, rows, ids = self.a, self.rows, self.ops.ids(ids)
        if self.any_pen:
            count = a["counts"][rows, ids] + 1.0
            a["counts"][rows, ids] = count
            pen = a["freq"][:, 0] * count + a["pres"][:, 0] * (count > 0)
            a["pen"][rows, ids] = pen
            a["off"][rows, ids] = a["bias"][rows, ids] - pen
        if self.any_rep:
            a["last"][rows, ids] = a["pos"][:, 0]
            a["pos"] += 1

    def _update_row(self, i: int) -> None:
        """:meth:`update` of one row on the host, by scalars."""
        counts, pen, off, bias, last, pos = self.row0
        if self.any_pen:
            pres, freq = self.settings
            count = counts[i] = counts[i] + 1.0
            p = pen[i] = freq * count + pres * (count > 0)
            off[i] = bias[i] - p
        if self.any_rep:
            now, at, seen = int(pos[0]), self.at, self.seen[0]
            if at.get(int(last[i])) == i:
                del at[int(last[i])]
            last[i] = now
            at[now] = i
            seen[i] = True
            gone = at.pop(now - self.span, None)  # the position that leaves the window with this step
            if gone is not None:
                seen[gone] = False
            pos[0] = now + 1

    def select(self, rows: Any) -> History:
        """The history of the rows ``rows`` (index array where the logits are), in that order."""
        return History(self.ops, {k: v[rows] for k, v in self.a.items()})

    def join(self, other: History) -> History:
        """This history's rows, then ``other``'s."""
        return History(self.ops, {k: self.ops.cat([v, other.a[k]]) for k, v in self.a.items()})
