"""The recurrent cells in NumPy: one step of each (``lstm_cell``, ``gru_cell``, ``min_cell``; the Elman cell's
is one tanh) on a batch, and one layer over a sequence (``lstm_steps``, ``gru_steps``, ``rnn_steps``,
``min_steps``), which ``NumpyStep.features`` runs and ``inspect`` records.
The sigmoid gates' columns are pre-halved (``half_gates``): sigmoid(x) = 0.5 tanh(x / 2) + 0.5, so one
tanh covers every gate. Nothing here imports torch."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "candidate",
    "gated_layers",
    "gru_cell",
    "gru_steps",
    "half_gates",
    "layer_norm",
    "log_sigmoid",
    "log_softmax",
    "lstm_cell",
    "lstm_steps",
    "min_cell",
    "min_coefficients",
    "min_input",
    "min_layers",
    "min_steps",
    "rnn_steps",
    "sigmoid",
]


def half_gates(gates: int, hidden: int, halved: tuple) -> np.ndarray:
    """Column scales (gates * hidden,): 0.5 for the gates passed through a sigmoid, 1 for the others."""
    scale = np.ones(gates * hidden, dtype=np.float32)
    for g in halved:
        scale[g * hidden : (g + 1) * hidden] = 0.5
    return scale


def lstm_cell(gates: np.ndarray, c: np.ndarray, H: int) -> tuple[np.ndarray, np.ndarray]:
    """h, c from the gates (B, 4H), the i, f and o columns pre-halved: sigmoid(x) = 0.5 tanh(x / 2) + 0.5,
    so one tanh covers all four gates."""
    t = np.tanh(gates)
    s = t * 0.5
    s += 0.5  # sigmoids of i, f, o
    c = s[:, H : 2 * H] * c
    c += s[:, :H] * t[:, 2 * H : 3 * H]  # f * c + i * tanh(g)
    return s[:, 3 * H :] * np.tanh(c), c


def gru_cell(gi: np.ndarray, gh: np.ndarray, h: np.ndarray, H: int) -> np.ndarray:
    """The new h from the input and hidden parts (B, 3H), their r and z columns pre-halved."""
    rz = gi[:, : 2 * H] + gh[:, : 2 * H]
    np.tanh(rz, out=rz)
    rz *= 0.5
    rz += 0.5  # sigmoids of r and z
    n = np.tanh(gi[:, 2 * H :] + rz[:, :H] * gh[:, 2 * H :])
    return n + rz[:, H:] * (h - n)  # (1 - z) * n + z * h


def lstm_steps(
    gin: np.ndarray, w_hh: np.ndarray, h: np.ndarray, c: np.ndarray, out: np.ndarray, kept: dict | None
) -> tuple[np.ndarray, np.ndarray]:
    """One LSTM layer over T steps (gin (B, T, 4H)): its outputs into ``out``, and h, c after the last;
    ``kept`` (a dict, or None) takes each step's c and gates' pre-activations."""
    H, T = h.shape[1], gin.shape[1]
    if kept is not None:
        kept["c"], kept["pre"] = np.empty_like(out), np.empty_like(gin)
    for t in range(T):
        gates = gin[:, t] + h @ w_hh
        h, c = lstm_cell(gates, c, H)
        out[:, t] = h
        if kept is not None:
            kept["c"][:, t], kept["pre"][:, t] = c, gates
    return h, c


def gru_steps(
    gin: np.ndarray, w_hh: np.ndarray, b_hh: np.ndarray, h: np.ndarray, out: np.ndarray, kept: dict | None
) -> np.ndarray:
    """One GRU layer over T steps: its outputs into ``out``, and h after the last; ``kept`` (a dict, or
    None) takes the input parts and each step's hidden parts."""
    H, T = h.shape[1], gin.shape[1]
    if kept is not None:
        kept["gin"], kept["gh"] = gin, np.empty_like(gin)
    for t in range(T):
        gh = h @ w_hh + b_hh
        h = out[:, t] = gru_cell(gin[:, t], gh, h, H)
        if kept is not None:
            kept["gh"][:, t] = gh
    return h


def rnn_steps(gin: np.ndarray, w_hh: np.ndarray, h: np.ndarray, out: np.ndarray, kept: dict | None) -> np.ndarray:
    """One Elman layer over T steps (gin (B, T, H), the input part with both biases): h = tanh(gin + h @ w_hh),
    into ``out``; h after the last; ``kept`` (a dict, or None) takes each step's pre-activation ``pre``."""
    if kept is not None:
        kept["pre"] = np.empty_like(gin)
    for t in range(gin.shape[1]):
        pre = gin[:, t] + h @ w_hh
        h = out[:, t] = np.tanh(pre)
        if kept is not None:
            kept["pre"][:, t] = pre
    return h


def sigmoid(x: np.ndarray) -> np.ndarray:
    """torch's sigmoid, 1 / (1 + exp(-x)), to its rounding (exp overflowing to inf gives the 0 it should)."""
    with np.errstate(over="ignore"):
        return np.float32(1) / (np.float32(1) + np.exp(-x))


def log_sigmoid(x: np.ndarray) -> np.ndarray:
    """log sigmoid(x) = -log(1 + exp(-x)), finite for every finite x."""
    return -np.logaddexp(np.float32(0), -x)


def candidate(c: np.ndarray) -> np.ndarray:
    """A min cell's g(c): c + 1/2 from 0 on, sigmoid(c) below (``minrnn.g``)."""
    return np.where(c >= 0, c + np.float32(0.5), sigmoid(c))


def min_coefficients(cell: str, pre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a and b (..., H) of a min cell's h_t = a_t h_{t-1} + b_t from its pre-activations (..., G*H):
    ``minrnn.coefficients`` in NumPy (minGRU z, c; minLSTM f, i, c; g(x) = x + 1/2 or sigmoid(x) below 0)."""
    parts = np.split(pre, 2 if cell == "mingru" else 3, axis=-1)
    g = candidate(parts[-1])
    if cell == "mingru":
        z = sigmoid(parts[0])
        return 1 - z, z * g
    d = log_sigmoid(parts[0]) - log_sigmoid(parts[1])  # f / (f + i) = sigmoid(log f - log i): no 0 / 0
    return sigmoid(d), sigmoid(-d) * g


def min_cell(cell: str, pre: np.ndarray, h: np.ndarray) -> np.ndarray:
    """A min cell's new state (B, H) from its pre-activations (B, G*H) and the state h."""
    a, b = min_coefficients(cell, pre)
    return a * h + b


def min_steps(cell: str, gin: np.ndarray, h: np.ndarray, out: np.ndarray, kept: dict | None) -> np.ndarray:
    """One min-cell layer over T steps (gin (B, T, G*H), every gate read from the input): its states into
    ``out``, h after the last; ``kept`` (a dict, or None) takes the pre-activations ``pre``."""
    a, b = min_coefficients(cell, gin)
    if kept is not None:
        kept["pre"] = gin
    for t in range(gin.shape[1]):
        h = out[:, t] = a[:, t] * h + b[:, t]
    return h


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """LayerNorm over the last axis, as torch's (the biased variance, eps inside the root)."""
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = np.square(centred).mean(axis=-1, keepdims=True)
    return centred / np.sqrt(var + np.float32(eps)) * weight + bias


def gated_layers(w: dict[str, np.ndarray], num_layers: int, H: int, cell: str) -> list[tuple[Any, ...]]:
    """An LSTM's, GRU's or RNN's layers prepared from a run's arrays ``w``. The sigmoid gates' columns are halved
    once here (exact: a power of two), so that a step takes one tanh per gate group (see lstm_cell): LSTM i, f,
    o; GRU r, z. LSTM and RNN: (layer 0's input table or the bias, the weight over h or [x, h]); GRU: (input
    part, w_ih or None, w_hh, b_hh)."""
    emb = w["embedding.weight"]  # (V, E)
    layers: list[tuple[Any, ...]] = []
    for k in range(num_layers):
        w_ih, w_hh = w[f"rnn.weight_ih_l{k}"], w[f"rnn.weight_hh_l{k}"]  # (G*H, in), (G*H, H)
        b_ih, b_hh = w[f"rnn.bias_ih_l{k}"], w[f"rnn.bias_hh_l{k}"]
        if cell != "gru":  # LSTM, and the RNN: its layout with one gate, a tanh, not halved (x 1 is exact)
            half = half_gates(4, H, (0, 1, 3)) if cell == "lstm" else np.ones(H, dtype=np.float32)
            if k == 0:  # the input projection of every id, biases folded in: (V, 4H)
                layers.append(((emb @ w_ih.T + (b_ih + b_hh)) * half, np.ascontiguousarray(w_hh.T * half)))
            else:  # one matmul over [x, h]: (in + H, 4H)
                layers.append(((b_ih + b_hh) * half, np.ascontiguousarray(np.concatenate([w_ih, w_hh], 1).T * half)))
        else:  # GRU keeps input and hidden parts apart: r gates only the hidden part of n
            half = half_gates(3, H, (0, 1))
            gi_src = (emb @ w_ih.T + b_ih) * half if k == 0 else b_ih * half
            w_in = None if k == 0 else np.ascontiguousarray(w_ih.T * half)
            layers.append((gi_src, w_in, np.ascontiguousarray(w_hh.T * half), b_hh * half))
    return layers


def min_layers(w: dict[str, np.ndarray], num_layers: int, H: int) -> list[tuple[Any, ...]]:
    """A min cell's layers prepared from a run's arrays ``w``: layer 0's gates as a table over the ids (the gates read the input only),
    with the embedding kept where it is added back; then each deeper layer's bias, weight and LayerNorm."""
    emb = w["embedding.weight"]
    layers: list[tuple[Any, ...]] = []
    for k in range(num_layers):
        norm_w, norm_b = w[f"rnn.norm_weight_l{k}"], w[f"rnn.norm_bias_l{k}"]
        w_ih, b_ih = w[f"rnn.weight_ih_l{k}"], w[f"rnn.bias_ih_l{k}"]
        if k == 0:
            layers.append((layer_norm(emb, norm_w, norm_b) @ w_ih.T + b_ih, emb if emb.shape[1] == H else None))
        else:
            layers.append((b_ih, np.ascontiguousarray(w_ih.T), norm_w, norm_b))
    return layers


def min_input(layer: tuple[Any, ...], k: int, ids: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, Any]:
    """A min-cell layer's pre-activations (..., G*H) and what its output adds back (or None), from the ids
    (layer 0) or the layer below's output x."""
    if k == 0:
        table, emb = layer
        return table[ids], None if emb is None else emb[ids]
    b, w, norm_w, norm_b = layer
    return layer_norm(x, norm_w, norm_b) @ w + b, x


def log_softmax(x: np.ndarray) -> np.ndarray:
    """log_softmax over the last axis."""
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
