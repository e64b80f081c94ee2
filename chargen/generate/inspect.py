"""What the network sees (Karpathy, Johnson and Fei-Fei, "Visualizing and Understanding Recurrent Networks",
2015): each character's surprise, the model's guesses for the next one, every unit's activation over a text,
the units that track simple features of the text, and how often each gate saturates.

:func:`inspect` reads a text once, in chunks, with the state carried, on the NumPy step (the backend's
weights, the same arithmetic as the NumPy backend). ``logprobs`` are the backend's own scorer's, the very
numbers :meth:`Sampler.score` returns. Positions are characters of the text: ``units[t]`` is the state after
reading character ``t`` (so it has seen it); ``logprobs[t]`` and ``top[t]`` are the prediction *of*
character ``t`` from the state before it (the first from the start character).

Memory: the feature correlations and the gate statistics are running sums (a few numbers per unit), so a
text of any length costs the same; the kept units cost 4 bytes each per character and are capped at
:data:`MAX_KEPT` values: choose ``layers`` and ``units`` (or keep none) for a long text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import GATES, MIN_CELLS
from ..errors import ChargenError
from .numpy_cells import candidate, sigmoid
from .numpy_step import NumpyStep, Scorer

__all__ = ["FEATURES", "MAX_KEPT", "Inspection", "features_of", "inspect"]

MAX_KEPT = 64 << 20  # unit activations kept (float32): 256 MB
CHUNK = Scorer.CHUNK  # characters read at a time, as the NumPy scorer reads
SATURATED = (0.1, 0.9)  # a gate below the first is left-saturated, above the second right-saturated
FEATURES = ("inside quotes", "bracket depth", "position in line", "after a newline", "upper case")


@dataclass
class Inspection:
    """What :func:`inspect` finds; ``to_json`` gives the JSON the CLI and the server send."""

    chars: list[str]
    logprobs: np.ndarray  # (N,) float64, as Sampler.score
    top_ids: np.ndarray  # (N, K) the likeliest characters' ids at each position, likeliest first
    top_probs: np.ndarray  # (N, K) float32, their probabilities
    vocab: list[str]  # the run's characters, by id
    units: dict[str, dict[str, np.ndarray]]  # "layer K" -> {"h": (N, kept), "c": (N, kept)} (c: LSTM only)
    unit_ids: list[int]  # which units of each layer are kept
    correlations: dict[str, list[dict[str, Any]]]  # feature -> best units: layer, kind, unit, r
    gates: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)  # layer -> gate -> left/right

    @property
    def top(self) -> list[list[tuple[str, float]]]:
        """Per position, the likeliest characters and their probabilities (built on each call)."""
        return self.top_rows(0, len(self.chars))

    def top_rows(self, lo: int, hi: int) -> list[list[tuple[str, float]]]:
        vocab = self.vocab
        return [
            [(vocab[i], float(p)) for i, p in zip(ids, probs)]
            for ids, probs in zip(self.top_ids[lo:hi].tolist(), self.top_probs[lo:hi])
        ]

    def column(self, name: str, lo: int, hi: int) -> list:
        """Positions lo..hi of a per-position field of the JSON: ``chars``, ``logprobs`` or ``top``."""
        if name == "chars":
            return self.chars[lo:hi]
        if name == "logprobs":
            return [round(x, 6) for x in self.logprobs[lo:hi].tolist()]
        return [[[c, round(p, 6)] for c, p in row] for row in self.top_rows(lo, hi)]

    def unit_rows(self, layer: str, kind: str, lo: int, hi: int) -> list:
        """Positions lo..hi of one layer's kept units of one kind, as the JSON gives them."""
        return np.round(self.units[layer][kind][lo:hi].astype(np.float64), 5).tolist()  # 0.53787, not float32's

    def to_json(self) -> dict[str, Any]:
        """All of it as one object (``report.json_pieces`` writes the same text piece by piece)."""
        n = len(self.chars)
        return {
            **{name: self.column(name, 0, n) for name in ("chars", "logprobs", "top")},
            "units": {
                layer: {kind: self.unit_rows(layer, kind, 0, n) for kind in kinds}
                for layer, kinds in self.units.items()
            },
            "unit_ids": self.unit_ids,
            "correlations": self.correlations,
            "gates": self.gates,
        }


def features_of(text: str) -> dict[str, np.ndarray]:
    """Each simple feature of the text at every character (after reading it): inside double quotes (the
    quotes included), bracket depth, position in its line (from 0; a newline ends its line), whether the
    character before was a newline (the first: yes), upper case."""
    n = len(text)
    quote = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32) if n else np.zeros(0, np.uint32)
    is_quote = quote == ord('"')
    opened = np.cumsum(is_quote) % 2 == 1
    depth = np.cumsum([1 if c in "([{" else -1 if c in ")]}" else 0 for c in text])
    newline = quote == ord("\n")
    last = np.maximum.accumulate(np.where(newline, np.arange(n), -1)) if n else np.zeros(0, np.int64)
    since = np.arange(n) - np.concatenate([[-1], last[:-1]]) - 1 if n else last  # from the line's first character
    after = np.concatenate([[True], newline[:-1]]) if n else np.zeros(0, bool)
    return {
        "inside quotes": (opened | is_quote).astype(np.float64),
        "bracket depth": np.maximum(depth, 0).astype(np.float64),
        "position in line": since.astype(np.float64),
        "after a newline": after.astype(np.float64),
        "upper case": np.array([c.isupper() for c in text], dtype=np.float64),
    }


class _Sums:
    """Running sums for the Pearson correlation of every unit with every feature, and gate saturation."""

    def __init__(self, names: list[str]):
        self.names, self.n = names, 0
        self.sx = self.sxx = self.sy = self.syy = self.sxy = None  # type: Any

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """x (t, F) features, y (t, U) units of t positions."""
        x, y = x.astype(np.float64), y.astype(np.float64)
        parts = (x.sum(0), (x * x).sum(0), y.sum(0), (y * y).sum(0), x.T @ y)
        if self.sx is None:
            self.sx, self.sxx, self.sy, self.syy, self.sxy = parts
        else:
            self.sx, self.sxx, self.sy, self.syy, self.sxy = (a + b for a, b in zip(self.sums, parts))
        self.n += len(x)

    @property
    def sums(self) -> tuple:
        return self.sx, self.sxx, self.sy, self.syy, self.sxy

    def correlations(self) -> np.ndarray:
        """(F, U) Pearson r; NaN where a feature or a unit does not vary."""
        n = self.n
        cov = self.sxy - np.outer(self.sx, self.sy) / n
        vx, vy = self.sxx - self.sx**2 / n, self.syy - self.sy**2 / n
        with np.errstate(invalid="ignore", divide="ignore"):
            r = cov / np.sqrt(np.outer(vx, vy))
        r[:, vy <= 1e-12 * n] = np.nan
        r[vx <= 1e-12 * n, :] = np.nan
        return r


def _step_of(sampler: Any) -> NumpyStep:
    if sampler.backend == "numpy":
        return sampler.runtime.step  # the NumPy runtime's step
    model = sampler.model
    weights = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    return NumpyStep(weights, model.config)


GATE_NAMES = {
    "lstm": ("input", "forget", "cell", "output"),
    "gru": ("reset", "update", "new"),
    "rnn": ("new",),
    "mingru": ("update", "candidate"),
    "minlstm": ("forget", "input", "candidate"),
}
SIGMOID = {
    "lstm": ("input", "forget", "output"),
    "gru": ("reset", "update"),
    "rnn": (),
    "mingru": ("update",),
    "minlstm": ("forget", "input"),
}


def inspect(
    sampler: Any,  # a Sampler (not imported: the sampler imports this module)
    text: str,
    top: int = 5,
    layers: Sequence[int] | None = None,
    units: Sequence[int] | None = None,
    best: int = 5,
    chunk: int = CHUNK,
) -> Inspection:
    """See the module docstring. ``layers``/``units``: which layers (from 0) and units of each to keep (all by
    default; ``units=[]`` keeps none); the statistics always cover every unit. ``best``: units listed per
    feature."""
    top = min(top, len(sampler.vocab.chars))  # a vocabulary of fewer characters lists them all
    ids = sampler.encode(text)
    if ids.size == 0:
        raise ChargenError("there is no text to inspect: give at least one character")
    step = _step_of(sampler)
    L, H, N = step.L, step.H, ids.size
    keep_layers = list(range(L)) if layers is None else sorted(set(layers))
    if any(not 0 <= k < L for k in keep_layers):
        raise ChargenError(f"layers must be between 0 and {L - 1} (this model has {L}), got {list(layers or [])}")
    keep_units = list(range(H)) if units is None else sorted(set(units))
    wrong = [j for j in keep_units if not 0 <= j < H]
    if wrong:
        shown = ", ".join(map(str, wrong[:5])) + (", ..." if len(wrong) > 5 else "")
        raise ChargenError(f"units must be between 0 and {H - 1} (this model's layers have {H}), got {shown}")
    kinds = ("h", "c") if step.cell == "lstm" else ("h",)
    kept = N * len(keep_layers) * len(kinds) * len(keep_units)
    if kept > MAX_KEPT:
        raise ChargenError(
            f"keeping {len(keep_layers) * len(kinds) * len(keep_units):,} units over {N:,} characters is "
            f"{kept * 4 / 2**20:,.0f} MB; choose fewer layers or units (at most {MAX_KEPT * 4 >> 20} MB)"
        )
    read = sampler.vocab.decode(ids)
    found = features_of(read)
    feats = np.stack([found[name] for name in FEATURES], axis=1)  # (N, F)
    reads = _read(step, sampler, ids, top, keep_layers, keep_units, kinds, feats, chunk)
    if sampler.backend == "numpy" and chunk == Scorer.CHUNK:
        logprobs = reads["logprobs"]  # read as the scorer reads: the same arithmetic, the same numbers
    else:
        logprobs = sampler.runtime.scorer(sampler.vocab.start_id)(ids)
    return Inspection(
        chars=list(read),
        logprobs=logprobs,
        top_ids=reads["top_ids"],
        top_probs=reads["top_probs"],
        vocab=list(sampler.vocab.chars),
        units=reads["units"],
        unit_ids=keep_units,
        correlations=_best_units(reads["sums"], L, kinds, H, best),
        gates=_saturation(reads["saturation"], step.cell, N),
    )


def _read(
    step: NumpyStep,
    sampler: Any,  # a Sampler (not imported: the sampler imports this module)
    ids: np.ndarray,
    top: int,
    keep_layers: list[int],
    keep_units: list[int],
    kinds: tuple[str, ...],
    feats: np.ndarray,
    chunk: int,
) -> dict[str, Any]:
    """Read the text chunk by chunk, as the scorer reads it (``NumpyStep.features``, recording): the
    log-probabilities, the top guesses, the kept units, the running sums."""
    L, N = step.L, ids.size
    state = None
    inputs = np.concatenate([[sampler.vocab.start_id], ids])  # input j: the state after it predicts ids[j]
    sums = _Sums(list(FEATURES))
    saturation = np.zeros((L, 2, len(GATE_NAMES[step.cell]) * step.H))
    kept: dict[str, dict[str, list]] = {f"layer {k}": {kind: [] for kind in kinds} for k in keep_layers}
    if not keep_units:
        kept = {}  # no unit of any layer is kept
    logprobs = np.empty(N)
    top_ids, top_probs = np.empty((N, top), np.int32), np.empty((N, top), np.float32)
    for lo in range(0, N, chunk):
        x = inputs[lo : min(lo + chunk, N)]  # the last input predicts nothing
        record: list[dict[str, np.ndarray]] = []
        h, state = step.features(x[None, :], state, record)
        lp = step.log_probs(h[0])  # (t, V): the next character after each input
        t = len(x)
        logprobs[lo : lo + t] = lp[np.arange(t), ids[lo : lo + t]]
        order = np.argsort(-lp, axis=1, kind="stable")[:, :top]
        top_ids[lo : lo + t] = order
        top_probs[lo : lo + t] = np.exp(np.take_along_axis(lp, order, axis=1))
        # the state after input j is position j - 1's (it has read that character; the start's is nobody's)
        span = slice(1, None) if lo == 0 else slice(None)
        first = lo - 1 if lo else 0  # the position of the chunk's first kept state
        _add_chunk(sums, saturation, feats[first:], record, span, step.cell, kinds)
        _keep(kept, record, span, keep_units)
    record = []  # the last character's units: one more step, reading it
    step.features(inputs[N:][None, :], state, record)
    _add_chunk(sums, saturation, feats[N - 1 :], record, slice(None), step.cell, kinds)
    _keep(kept, record, slice(None), keep_units)
    units = {layer: {kind: np.concatenate(parts) for kind, parts in kinds_.items()} for layer, kinds_ in kept.items()}
    return {
        "logprobs": logprobs,
        "top_ids": top_ids,
        "top_probs": top_probs,
        "units": units,
        "sums": sums,
        "saturation": saturation,
    }


def _gates(got: dict[str, np.ndarray], cell: str, span: slice) -> np.ndarray:
    """(t, G*H) gate values from one layer's record: sigmoid gates as sigmoids, the cell's g or n as tanh (an
    RNN's one "gate" is its new state; a min cell's candidate is g(c), not a gate that saturates)."""
    if cell in MIN_CELLS:
        pre = got["pre"][0, span]
        H = pre.shape[1] // GATES[cell]
        return np.concatenate([sigmoid(pre[:, :-H]), candidate(pre[:, -H:])], axis=1)
    if cell == "rnn":
        return np.tanh(got["pre"][0, span])
    if cell == "lstm":
        g = np.tanh(got["pre"][0, span])
        H = g.shape[1] // 4
        g[:, : 2 * H] = g[:, : 2 * H] * 0.5 + 0.5
        g[:, 3 * H :] = g[:, 3 * H :] * 0.5 + 0.5
        return g
    gin, gh = got["gin"][0, span], got["gh"][0, span]
    H = gin.shape[1] // 3
    rz = np.tanh(gin[:, : 2 * H] + gh[:, : 2 * H]) * 0.5 + 0.5
    n = np.tanh(gin[:, 2 * H :] + rz[:, :H] * gh[:, 2 * H :])
    return np.concatenate([rz, n], axis=1)


def _keep(kept: dict[str, dict[str, list]], record: list[dict[str, np.ndarray]], span: slice, units: list) -> None:
    for k, got in enumerate(record):
        for kind, parts in kept.get(f"layer {k}", {}).items():
            parts.append(got[kind][0, span][:, units])


def _add_chunk(
    sums: _Sums,
    saturation: np.ndarray,
    feats: np.ndarray,
    record: list[dict[str, np.ndarray]],
    span: slice,
    cell: str,
    kinds: tuple[str, ...],
) -> None:
    """Add a chunk's positions (``record``'s steps in ``span``; ``feats`` (N', F) from the first of them)
    to the running sums: the units against the features, and the gates' saturation."""
    units_all = np.concatenate([got[kind][0, span] for got in record for kind in kinds], axis=1)
    if not len(units_all):
        return
    sums.add(feats[: len(units_all)], units_all)
    for k, got in enumerate(record):
        g = _gates(got, cell, span)
        saturation[k, 0] += (g < SATURATED[0]).sum(0)
        saturation[k, 1] += (g > SATURATED[1]).sum(0)


def _best_units(sums: _Sums, L: int, kinds: tuple[str, ...], H: int, best: int) -> dict[str, list[dict[str, Any]]]:
    """For each feature, the ``best`` units by |r| (the layer, kind and unit of each, and r)."""
    r = sums.correlations()  # (F, L * kinds * H), in the order units were concatenated
    out: dict[str, list[dict[str, Any]]] = {}
    for f, name in enumerate(FEATURES):
        row = np.nan_to_num(np.abs(r[f]), nan=-1.0)
        picks = [int(i) for i in np.argsort(-row, kind="stable")[:best] if row[i] >= 0]
        out[name] = [
            {
                "layer": i // (len(kinds) * H),
                "kind": kinds[(i // H) % len(kinds)],
                "unit": i % H,
                "r": round(float(r[f, i]), 4),
            }
            for i in picks
        ]
    return out


def _saturation(counts: np.ndarray, cell: str, n: int) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Per layer and sigmoid gate, the fraction of characters each unit spent left- and right-saturated."""
    names, H = GATE_NAMES[cell], counts.shape[2] // len(GATE_NAMES[cell])
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for k in range(counts.shape[0]):
        out[f"layer {k}"] = {
            name: {
                "left": np.round(counts[k, 0, g * H : (g + 1) * H] / n, 4).tolist(),
                "right": np.round(counts[k, 1, g * H : (g + 1) * H] / n, 4).tolist(),
            }
            for g, name in enumerate(names)
            if name in SIGMOID[cell]
        }
    return out
