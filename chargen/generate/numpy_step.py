"""One recurrent step and the sampling rules in NumPy alone: the start of the torch-free runtime (issue 13).

``NumpyStep`` computes what ``decode.FastStep`` computes, from the arrays of a run's weights file
(``safetensors.numpy``): the first layer's input projection becomes a (V, G*H) lookup table with the
biases folded in, deeper LSTM layers take one matmul over [x, h], and the output layer is the full
softmax's matrix or the adaptive softmax's clusters, read through ``head.rank``. ``pick`` is
``decode.pick`` on arrays: greedy at temperature 0, else inverse-CDF sampling in float64 with the
same cut rules, so the same logits and uniforms pick the same ids.

Nothing here imports torch.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any, TypeAlias

import numpy as np

from ..config import MIN_CELLS, ModelConfig, SampleOptions
from .draws import draw_loop
from .numpy_cells import (
    gated_layers,
    gru_cell,
    gru_steps,
    log_softmax,
    lstm_cell,
    lstm_steps,
    min_cell,
    min_input,
    min_layers,
    min_steps,
    rnn_steps,
)
from .rules import NUMPY_OPS, History

__all__ = ["NumpyRuntime", "NumpyStep", "Scorer", "log_softmax", "pick", "prime", "sample_ids"]

# NumpyStep's state: per-layer (B, H) arrays, [hs, cs] for an LSTM, [hs] for a GRU.
NumpyState: TypeAlias = list[list[np.ndarray]]


class NumpyStep:
    """A CharRNN step on NumPy arrays. The state is a list of per-layer arrays (B, H), as
    ``FastStep``'s: ``[hs, cs]`` for an LSTM, ``[hs]`` for a GRU or an RNN."""

    def __init__(self, weights: dict[str, np.ndarray], config: ModelConfig):
        c = config
        self.config, self.cell, self.L, self.H = c, c.cell, c.num_layers, c.hidden_size
        w: dict[str, np.ndarray] = {
            k: np.asarray(v, dtype=np.int64 if k == "head.rank" else np.float32) for k, v in weights.items()
        }
        emb = w["embedding.weight"]  # (V, E)
        # LSTM and RNN: (input table or bias, weight); GRU: (input part, w_ih or None, w_hh, b_hh); a min cell:
        # (table, the embedding added back or None), then (bias, weight, LayerNorm weight, LayerNorm bias)
        prepare = min_layers if c.cell in MIN_CELLS else functools.partial(gated_layers, cell=c.cell)
        self.layers: list[tuple[Any, ...]] = prepare(w, c.num_layers, c.hidden_size)
        if c.adaptive:
            assert c.cutoffs is not None  # an adaptive config has its cutoffs (ModelConfig.resolve_softmax)
            self.head_w = np.ascontiguousarray(w["head.head.weight"].T)  # (H, shortlist + clusters)
            self.head_b = w["head.head.bias"]
            self.tails = [
                (
                    np.ascontiguousarray(w[f"head.tail.{i}.0.weight"].T),
                    np.ascontiguousarray(w[f"head.tail.{i}.1.weight"].T),
                )
                for i in range(len(c.cutoffs))
            ]
            self.rank = w["head.rank"]
        else:
            self.head_w = np.ascontiguousarray((w.get("head.weight", emb)).T)  # (H, V)
            self.head_b = w["head.bias"]

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], config: ModelConfig) -> NumpyStep:
        """The step of a run's weights file, checked against ``config`` (``rundir.load_arrays``)."""
        from ..runs.folder import load_arrays

        return cls(load_arrays(path, config), config)

    def zero_state(self, batch: int) -> NumpyState:
        zeros = [np.zeros((batch, self.H), dtype=np.float32) for _ in range(self.L)]
        return [zeros, [z.copy() for z in zeros]] if self.cell == "lstm" else [zeros]

    def output(self, x: np.ndarray) -> np.ndarray:
        """The output layer: (B, H) -> logits (B, V); log-probabilities with the adaptive softmax."""
        if not self.config.adaptive:
            return x @ self.head_w + self.head_b
        head = log_softmax(x @ self.head_w + self.head_b)  # (B, shortlist + clusters)
        assert self.config.cutoffs is not None  # adaptive: set, as __init__ found
        c0 = self.config.cutoffs[0]
        parts = [head[:, :c0]]
        for i, (project, cluster) in enumerate(self.tails):
            parts.append(log_softmax((x @ project) @ cluster) + head[:, c0 + i : c0 + i + 1])
        return np.concatenate(parts, axis=1)[:, self.rank]

    def log_probs(self, x: np.ndarray) -> np.ndarray:
        """Log-probabilities (N, V) of the next character after outputs x (N, H)."""
        out = self.output(x)
        return out if self.config.adaptive else log_softmax(out)

    def features(
        self, ids: np.ndarray, state: NumpyState | None = None, record: list | None = None
    ) -> tuple[np.ndarray, NumpyState]:
        """ids (B, T) -> the top layer's outputs (B, T, H) and the state after them. Layer by layer: each
        layer's input projection is one matmul over the whole sequence, then one matmul per step. With
        ``record`` (a list), each layer's arrays over the steps are appended to it, the same arithmetic:
        ``h``, and ``c`` and the gates' pre-activations ``pre`` (B, T, 4H) for an LSTM, the pre-activation
        ``pre`` (B, T, H) for an RNN, or the input and hidden parts ``gin`` and ``gh`` (B, T, 3H) for a GRU
        (sigmoid columns pre-halved)."""
        ids = np.asarray(ids)
        B, T = ids.shape
        H = self.H
        state = self.zero_state(B) if state is None else state
        x = ids  # each layer's input (B, T, in): layer 0 reads the ids through its table
        new_state: NumpyState = [[] for _ in state]
        for k, layer in enumerate(self.layers):
            out = np.empty((B, T, H), dtype=np.float32)
            kept: dict[str, np.ndarray] | None = None if record is None else {"h": out}
            if self.cell in MIN_CELLS:
                gin, res = min_input(layer, k, ids, x)  # (B, T, G*H)
                new_state[0].append(min_steps(self.cell, gin, state[0][k], out, kept))
                if res is not None:
                    out = out + res
            elif self.cell in ("lstm", "rnn"):
                a, w = layer
                gin, w_hh = (a[ids], w) if k == 0 else (x @ w[:H] + a, w[H:])  # (B, T, G*H)
                if self.cell == "rnn":
                    new_state[0].append(rnn_steps(gin, w_hh, state[0][k], out, kept))
                else:
                    h, c = lstm_steps(gin, w_hh, state[0][k], state[1][k], out, kept)
                    new_state[0].append(h)
                    new_state[1].append(c)
            else:
                gi_src, w_ih, w_hh, b_hh = layer
                gin = gi_src[ids] if k == 0 else x @ w_ih + gi_src  # (B, T, 3H)
                new_state[0].append(gru_steps(gin, w_hh, b_hh, state[0][k], out, kept))
            if record is not None:
                record.append(kept)
            x = out
        return x, new_state

    def __call__(self, ids: np.ndarray, state: NumpyState) -> tuple[np.ndarray, NumpyState]:
        """ids (B,), per-layer state -> logits (B, V), new per-layer state."""
        H, x = self.H, ids  # x: each layer's input; layer 0 reads the ids through its table
        rows = ids[0] if len(ids) == 1 else ids  # one id: its table row as a view, not a gathered copy
        if self.cell in MIN_CELLS:
            (hs,) = state
            new_h = []
            for k, layer in enumerate(self.layers):
                pre, res = min_input(layer, k, rows, x)
                h = min_cell(self.cell, pre.reshape(len(ids), -1), hs[k])
                new_h.append(h)
                x = h if res is None else h + res.reshape(len(ids), -1)
            state = [new_h]
        elif self.cell == "rnn":
            (hs,) = state
            new_h = []
            for k, (a, w) in enumerate(self.layers):
                pre = hs[0] @ w + a[rows] if k == 0 else np.concatenate([x, hs[k]], axis=1) @ w + a
                x = np.tanh(pre)
                new_h.append(x)
            state = [new_h]
        elif self.cell == "lstm":
            hs, cs = state
            new_h, new_c = [], []
            for k, (a, w) in enumerate(self.layers):
                if k == 0:
                    gates = hs[0] @ w  # (B, 4H)
                    gates += a[rows]
                else:
                    gates = np.concatenate([x, hs[k]], axis=1) @ w
                    gates += a
                x, c = lstm_cell(gates, cs[k], H)
                new_h.append(x)
                new_c.append(c)
            state = [new_h, new_c]
        else:
            (hs,) = state
            new_h = []
            for k, (gi_src, w_ih, w_hh, b_hh) in enumerate(self.layers):
                h = hs[k]
                gi = gi_src[rows].reshape(len(ids), -1) if k == 0 else x @ w_ih + gi_src  # (B, 3H)
                x = gru_cell(gi, h @ w_hh + b_hh, h, H)
                new_h.append(x)
            state = [new_h]
        return self.output(x), state


def prime(step: NumpyStep, ids: Sequence[int] | np.ndarray, batch: int = 1) -> tuple[np.ndarray, NumpyState]:
    """Logits (batch, V) for the character after ``ids`` (the start id first), and the state: the ids
    read from the zero state."""
    h, state = step.features(np.asarray(ids, dtype=np.int64)[None, :])
    logits = step.output(h[:, -1])
    return np.repeat(logits, batch, axis=0), [[np.repeat(x, batch, axis=0) for x in layer] for layer in state]


def sample_ids(
    step: NumpyStep,
    logits: np.ndarray,
    state: NumpyState,
    seeds: np.ndarray,
    opts: SampleOptions,
    banned: int | None = None,
    history: History | None = None,
) -> Iterator[np.ndarray]:
    """``torch_step.sample_ids`` on NumPy: the next ids (B,) ``opts.length`` times, row ``i`` drawn from
    ``seeds[i]``, one step per character after the first; ``banned`` is never drawn; ``history`` applies
    the rules on the logits."""
    return draw_loop(step, pick, logits, state, seeds, opts, banned, history=history)


def pick(
    logits: np.ndarray,
    u: np.ndarray | None,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    banned: int | None,
    min_p: float | None = None,
) -> np.ndarray:
    """Next ids (B,) from logits (B, V), by ``torch_step.pick``'s rules (u (B,) in [0, 1))."""
    if banned is not None:  # never emit the unknown token
        logits = logits.copy()
        logits[:, banned] = -np.inf
    if temperature == 0 or top_k == 1 or min_p == 1:
        return logits.argmax(axis=-1)
    if len(logits) == 1 and top_k is None and top_p is None:  # one stream: the same numbers, fewer calls
        assert u is not None  # draw_loop gives uniforms whenever it does not pick greedily
        return _pick_one(logits[0], float(u[0]), temperature, min_p)
    V = logits.shape[-1]
    # The maximum shifted to 0 (in float64, as torch_step.pick) before dividing: a tiny temperature then
    # sends every other logit to -inf.
    x = np.subtract(logits, logits.max(axis=-1, keepdims=True), dtype=np.float64)
    if temperature != 1.0:
        with np.errstate(over="ignore"):
            x /= temperature
    if top_k is not None and top_k < V:  # (the maximum stays: it is 0 still)
        kth = np.partition(x, V - top_k, axis=-1)[:, V - top_k : V - top_k + 1]  # (B, 1)
        x = np.where(x < kth, -np.inf, x)
    probs = np.exp(x)  # (B, V), unnormalized: the draw scales u by the total
    if top_p is not None and top_p < 1.0:
        probs /= probs.sum(axis=-1, keepdims=True)
        order = np.argsort(-probs, axis=-1, kind="stable")  # among ties the lower ids stay, as in torch
        sorted_p = np.take_along_axis(probs, order, axis=-1)
        before = np.cumsum(sorted_p, axis=-1) - sorted_p
        sorted_p = np.where(before >= top_p, 0.0, sorted_p)
        probs = np.zeros_like(probs)
        np.put_along_axis(probs, order, sorted_p, axis=-1)
    if min_p:  # after top-p, as torch_step.pick
        probs = np.where(probs < min_p * probs.max(axis=-1, keepdims=True), 0.0, probs)
    cdf = np.cumsum(probs, axis=-1)
    total = cdf[:, -1:]
    # Strictly below the total, so the id drawn always has probability > 0.
    target = np.minimum(np.asarray(u, dtype=np.float64)[:, None] * total, np.nextafter(total, 0.0))
    if len(cdf) == 1:
        return np.searchsorted(cdf[0], target[0], side="right")
    return (cdf <= target).sum(axis=-1)  # searchsorted(right=True), row by row


def _pick_one(row: np.ndarray, u: float, temperature: float, min_p: float | None) -> np.ndarray:
    """:func:`pick` of one row without top-k or top-p, in the same float64 operations on a vector (a
    single stream spends a good part of each character in the draw's small calls)."""
    x = np.subtract(row, row.max(), dtype=np.float64)
    if temperature != 1.0:
        if temperature < 1e-200:  # x / temperature may overflow to -inf: meant, not worth a warning
            with np.errstate(over="ignore"):
                x /= temperature
        else:
            x /= temperature
    np.exp(x, out=x)
    if min_p:
        x[x < min_p * x.max()] = 0.0
    np.cumsum(x, out=x)
    total = float(x[-1])
    target = min(u * total, math.nextafter(total, 0.0))  # strictly below the total, as pick
    return np.array([np.searchsorted(x, target, side="right")])


class NumpyRuntime:
    """The sampler's NumPy backend: priming, drawing and scoring on a :class:`NumpyStep` (see sample.py;
    ``decode.TorchRuntime`` is the torch one, with the same methods)."""

    name = "numpy"

    def __init__(self, step: NumpyStep):
        self.step = step

    def prime(self, ids: np.ndarray, batch: int) -> tuple[np.ndarray, NumpyState]:
        """Logits (batch, V) after ``ids`` ([start, prompt]) and the per-layer state."""
        return prime(self.step, ids, batch)

    ops = NUMPY_OPS  # what the rules' History needs (rules.py)

    def sample(
        self,
        logits: np.ndarray,
        state: NumpyState,
        seeds: np.ndarray,
        opts: SampleOptions,
        banned: int | None,
        history: History | None = None,
    ) -> Iterator[np.ndarray]:
        return sample_ids(self.step, logits, state, seeds, opts, banned, history)

    read_every = 1  # steps drawn between two reads of their ids (see TorchRuntime): here, every one

    @staticmethod
    def repeat(logits: np.ndarray, state: NumpyState, batch: int) -> tuple[np.ndarray, NumpyState]:
        """One row's logits and state as ``batch`` rows (new arrays: the row's are left as they are)."""
        return np.repeat(logits, batch, axis=0), [[np.repeat(x, batch, axis=0) for x in layer] for layer in state]

    @staticmethod
    def host_logits(logits: np.ndarray) -> np.ndarray:
        """Logits (B, V) on the host as float64 (the beam search reads them there)."""
        return logits.astype(np.float64)

    @staticmethod
    def select(state: NumpyState, rows: np.ndarray) -> NumpyState:
        """The state of the rows ``rows``, in that order."""
        return [[x[rows] for x in layer] for layer in state]

    def advance(self, ids: np.ndarray, state: NumpyState) -> tuple[np.ndarray, NumpyState]:
        """One step from host ids (B,): the next logits and state."""
        return self.step(ids, state)

    @staticmethod
    def to_numpy(columns: list) -> np.ndarray:
        """The drawn ids, one array (B,) per step -> (B, steps)."""
        return np.stack(columns, axis=1)

    def scorer(self, start_id: int) -> Scorer:
        return Scorer(self.step, start_id)


class Scorer:
    """Log-probabilities of one stream of ids read piece by piece, the state carried (the NumPy
    ``evaluate.StreamScorer``); the first id is scored after ``start_id``."""

    CHUNK = 1024  # positions read at a time: the input projections of a chunk are (CHUNK, G*H) floats

    def __init__(self, step: NumpyStep, start_id: int):
        self.step, self.prev = step, int(start_id)
        self.state: NumpyState | None = None

    def __call__(self, targets: np.ndarray) -> np.ndarray:
        """targets (t,) -> log-probabilities (t,) float64."""
        targets = np.asarray(targets, dtype=np.int64)
        out = []
        for lo in range(0, targets.size, self.CHUNK):
            piece = targets[lo : lo + self.CHUNK]
            x = np.concatenate([[self.prev], piece[:-1]])
            h, self.state = self.step.features(x[None, :], self.state)
            lp = self.step.log_probs(h[0])  # (t, V)
            out.append(lp[np.arange(piece.size), piece].astype(np.float64))
            self.prev = int(piece[-1])
        return np.concatenate(out) if out else np.zeros(0)
