"""The recurrent cells in NumPy: one step of each (``lstm_cell``, ``gru_cell``; the Elman cell's is one tanh)
on a batch, and one layer over a sequence (``lstm_steps``, ``gru_steps``, ``rnn_steps``), which
``NumpyStep.features`` runs and ``inspect`` records.
The sigmoid gates' columns are pre-halved (``half_gates``): sigmoid(x) = 0.5 tanh(x / 2) + 0.5, so one
tanh covers every gate. Nothing here imports torch."""

from __future__ import annotations

import numpy as np

__all__ = ["gru_cell", "gru_steps", "half_gates", "log_softmax", "lstm_cell", "lstm_steps", "rnn_steps"]


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


def log_softmax(x: np.ndarray) -> np.ndarray:
    """log_softmax over the last axis."""
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
