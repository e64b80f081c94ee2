"""``FastStep``: one recurrent step of a CharRNN on torch, with weights prepared once.

Calling ``nn.LSTM`` once per character costs far more than its arithmetic: each call validates arguments,
picks a kernel and allocates. ``FastStep`` applies the same weights directly: the first layer's input
projection becomes a (V, G*H) lookup table with the biases folded in, deeper LSTM and RNN layers take one
matmul over [x, h], under ``inference_mode``. It computes what ``nn.LSTM``/``nn.GRU``/``nn.RNN`` and
``MinRNN`` compute, in the same gate order (a test checks it). ``numpy_step.NumpyStep`` is its twin on NumPy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeAlias

import torch
import torch.nn.functional as F

from ..config import MIN_CELLS
from ..model.minrnn import mix
from ..model.network import AdaptiveHead, CharRNN, RNNState

__all__ = ["FastState", "FastStep"]

# FastStep's state: per-layer (B, H) tensors, [hs, cs] for an LSTM, [hs] for a GRU or an RNN.
FastState: TypeAlias = list[list[torch.Tensor]]


class FastStep:
    """One recurrent step of a CharRNN with prepared weights.

    The state is kept as a list of per-layer tensors (``to_fast``/``from_fast`` convert from and to the
    (L, B, H) layout of nn.LSTM/nn.GRU/nn.RNN), so a step does no stacking or slicing.
    """

    def __init__(self, model: CharRNN):
        c = model.config
        self.cell, self.L, self.H = c.cell, c.num_layers, c.hidden_size
        rnn = model.rnn
        with torch.no_grad():
            emb = model.embedding.weight  # (V, E)
            # LSTM and RNN: (input table or bias, weight); GRU: (input part, w_ih or None, w_hh, b_hh);
            # minGRU and minLSTM: layer 0 a table over the ids, above it (norm weight, norm bias, gates w, b)
            self.layers: list[tuple[Any, ...]] = [
                _PREPARE[c.cell](
                    emb if k == 0 else None,
                    *(getattr(rnn, f"{name}_l{k}") for name in _NAMES[c.cell in MIN_CELLS]),
                    c.hidden_size,
                )
                for k in range(c.num_layers)
            ]
            # The adaptive softmax is applied as the model applies it; a full one as one matmul.
            head = model.head  # an AdaptiveHead exactly when the config is adaptive
            self.adaptive = head if isinstance(head, AdaptiveHead) else None
            if not isinstance(head, AdaptiveHead):
                self.head_w = head.weight.t().contiguous()  # (H, V)
                self.head_b = head.bias.clone()
        self.device = model.embedding.weight.device

    def to_fast(self, state: RNNState) -> FastState:
        """(L, B, H) state(s) of nn.LSTM/nn.GRU/nn.RNN -> per-layer lists."""
        if isinstance(state, tuple):  # an LSTM's (h, c)
            return [list(state[0].unbind(0)), list(state[1].unbind(0))]
        return [list(state.unbind(0))]

    def from_fast(self, fast: FastState) -> RNNState:
        """Per-layer lists -> the (L, B, H) layout of nn.LSTM/nn.GRU/nn.RNN."""
        if self.cell == "lstm":
            return torch.stack(fast[0]), torch.stack(fast[1])
        return torch.stack(fast[0])

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor, fast: FastState) -> tuple[torch.Tensor, FastState]:
        """ids (B,), per-layer state -> logits (B, V), new per-layer state."""
        x, fast = _STEP[self.cell](self.layers, ids, fast, self.H)
        if self.adaptive is not None:
            return self.adaptive.log_probs(x), fast  # (B, V)
        return torch.addmm(self.head_b, x, self.head_w), fast  # (B, V)


# Each layer's tensors, as the prepare functions take them: (G*H, in), (G*H, H), (G*H,), (G*H,), and a min
# cell's LayerNorm (in,), (in,) with its gates (G*H, in), (G*H,).
_NAMES = {  # keyed by "is a min cell"
    False: ("weight_ih", "weight_hh", "bias_ih", "bias_hh"),
    True: ("norm_weight", "norm_bias", "weight_ih", "bias_ih"),
}
_T = torch.Tensor


def _prepare_lstm(emb: _T | None, w_ih: _T, w_hh: _T, b_ih: _T, b_hh: _T, H: int) -> tuple[_T, _T]:
    # tanh(x) = 2 sigmoid(2x) - 1: doubling the g rows lets one sigmoid cover all gates.
    scale = torch.ones(4 * H, 1, dtype=w_ih.dtype, device=w_ih.device)
    scale[2 * H : 3 * H] = 2.0
    if emb is not None:  # layer 0: the input projection of every id, biases folded in: (V, 4H)
        return torch.addmm(b_ih + b_hh, emb, w_ih.t()) * scale.t(), (w_hh * scale).t().contiguous()
    return (b_ih + b_hh) * scale[:, 0], (torch.cat([w_ih, w_hh], dim=1) * scale).t().contiguous()  # (in + H, 4H)


def _prepare_gru(emb: _T | None, w_ih: _T, w_hh: _T, b_ih: _T, b_hh: _T, H: int) -> tuple[Any, ...]:
    # The GRU keeps input and hidden parts apart: r gates only the hidden part of n.
    if emb is not None:
        return torch.addmm(b_ih, emb, w_ih.t()), None, w_hh.t().contiguous(), b_hh
    return b_ih, w_ih.t().contiguous(), w_hh.t().contiguous(), b_hh


def _prepare_rnn(emb: _T | None, w_ih: _T, w_hh: _T, b_ih: _T, b_hh: _T, H: int) -> tuple[_T, _T]:
    # The LSTM's layout with one gate and no doubling: h = tanh(table row + h @ w_hh), or of [x, h] @ w + b.
    if emb is not None:
        return torch.addmm(b_ih + b_hh, emb, w_ih.t()), w_hh.t().contiguous()
    return b_ih + b_hh, torch.cat([w_ih, w_hh], dim=1).t().contiguous()


def _prepare_min(emb: _T | None, norm_w: _T, norm_b: _T, w_ih: _T, b_ih: _T, H: int) -> tuple[Any, ...]:
    # The gates read the input only, so layer 0's are a table over the ids (normalized embedding, product,
    # bias), kept beside the embedding when it is added back (the residual path, where E = H).
    if emb is not None:
        table = F.linear(F.layer_norm(emb, emb.shape[-1:], norm_w, norm_b), w_ih, b_ih)  # (V, G*H)
        return table, emb if emb.shape[1] == H else None
    return b_ih, w_ih.t().contiguous(), norm_w, norm_b


def _min(cell: str, layers: list, ids: _T, fast: FastState, H: int) -> tuple[_T, FastState]:
    (hs,), x = fast, ids
    new_h = []
    for layer, prepared in enumerate(layers):
        if layer == 0:
            table, emb = prepared
            pre, res = table.index_select(0, ids), None if emb is None else emb.index_select(0, ids)
        else:
            b, w, norm_w, norm_b = prepared
            pre, res = torch.addmm(b, F.layer_norm(x, (H,), norm_w, norm_b), w), x
        h = mix(cell, pre, hs[layer])
        new_h.append(h)
        x = h if res is None else h + res
    return x, [new_h]


def _lstm(layers: list, ids: _T, fast: FastState, H: int) -> tuple[_T, FastState]:
    (hs, cs), x = fast, ids
    new_h, new_c = [], []
    for layer, (a, w) in enumerate(layers):
        if layer == 0:
            gates = torch.addmm(a.index_select(0, ids), hs[0], w)  # (B, 4H)
        else:
            gates = torch.addmm(a, torch.cat([x, hs[layer]], dim=1), w)
        gates = gates.sigmoid_()
        i, f, g, o = gates.split(H, dim=1)
        c = torch.addcmul(f * cs[layer], i, g.mul(2.0).sub_(1.0))  # f*c + i*tanh(g)
        x = o * c.tanh()
        new_h.append(x)
        new_c.append(c)
    return x, [new_h, new_c]


def _gru(layers: list, ids: _T, fast: FastState, H: int) -> tuple[_T, FastState]:
    (hs,), x = fast, ids
    new_h = []
    for layer, (gi_src, w_ih, w_hh, b_hh) in enumerate(layers):
        h = hs[layer]
        gi = gi_src.index_select(0, ids) if layer == 0 else torch.addmm(gi_src, x, w_ih)  # (B, 3H)
        gh = torch.addmm(b_hh, h, w_hh)  # (B, 3H)
        i_r, i_z, i_n = gi.split(H, dim=1)
        h_r, h_z, h_n = gh.split(H, dim=1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(torch.addcmul(i_n, r, h_n))
        x = torch.lerp(n, h, z)  # (1 - z) * n + z * h
        new_h.append(x)
    return x, [new_h]


def _rnn(layers: list, ids: _T, fast: FastState, H: int) -> tuple[_T, FastState]:
    (hs,), x = fast, ids
    new_h = []
    for layer, (a, w) in enumerate(layers):
        if layer == 0:
            x = torch.addmm(a.index_select(0, ids), hs[0], w).tanh_()  # (B, H)
        else:
            x = torch.addmm(a, torch.cat([x, hs[layer]], dim=1), w).tanh_()
        new_h.append(x)
    return x, [new_h]


_PREPARE: dict[str, Callable[..., tuple[Any, ...]]] = {
    "lstm": _prepare_lstm,
    "gru": _prepare_gru,
    "rnn": _prepare_rnn,
    "mingru": _prepare_min,
    "minlstm": _prepare_min,
}
_STEP: dict[str, Callable[[list, _T, FastState, int], tuple[_T, FastState]]] = {
    "lstm": _lstm,
    "gru": _gru,
    "rnn": _rnn,
    "mingru": functools.partial(_min, "mingru"),
    "minlstm": functools.partial(_min, "minlstm"),
}
