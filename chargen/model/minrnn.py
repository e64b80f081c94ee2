"""minGRU and minLSTM (Feng et al., 2024, "Were RNNs All We Needed?"): recurrent cells whose gates read the
input only, so that a layer over a whole window is a linear recurrence, solved at once by a parallel scan.

For one layer, with u the layer's input after a LayerNorm and the state h carried from the window before::

    minGRU:   z = sigmoid(W_z u + b_z),  c = g(W_c u + b_c),  h_t = (1 - z_t) h_{t-1} + z_t c_t
    minLSTM:  f = sigmoid(W_f u + b_f),  i = sigmoid(W_i u + b_i),  c = g(W_c u + b_c),
              h_t = f'_t h_{t-1} + i'_t c_t  with  f' = f / (f + i),  i' = i / (f + i)

    g(x) = x + 1/2 for x >= 0, sigmoid(x) below: positive, so h stays positive and has a logarithm.

Both are h_t = a_t h_{t-1} + b_t with a, b > 0: the gates of the whole window come from one matrix product,
and what is left over time is a linear recurrence with no product in it. Two ways solve it, equal to float
tolerance (a test checks every position):

- ``scan``, the paper's parallel scan: h_t = A_t (h_0 + sum_{s<=t} b_s / A_s) with A_t = a_1 ... a_t, which in
  log space is a cumulative sum and a cumulative log-sum-exp: every position at once, with no loop over
  time, and no overflow however long the window. This is the method on GPUs, where positions run in parallel.
- ``recurrence``, a loop over time of one fused multiply-add on (B, H), with its backward pass written out
  (:class:`_Recurrence`): no graph per step. On a CPU, whose few cores gain nothing from working on every
  position at once, it does less arithmetic: measured 2.1-2.4x the scan's training throughput on 2 cores
  (the whole model with AdamW, docs/measurements/cells-2026-12-07.txt), so ``method="auto"`` takes it there.

Sampling steps the same recurrence one character at a time (``MinRNN.step``).

Layers are stacked as pre-norm residual blocks: each layer's output is its input plus the cell's state
(the first layer's only where the embedding is as wide as the state). The gates of a min cell read the
input only, so depth is where the network mixes what the state holds; the residual path keeps a deep stack
trainable and the LayerNorm keeps the gates' inputs at one scale while the positive states accumulate.
The parameters keep nn.GRU's naming (``weight_ih_l{k}``, ``bias_ih_l{k}``) beside the norms'
(``norm_weight_l{k}``, ``norm_bias_l{k}``), so a run's weights file lists them the same way.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["GATES", "METHODS", "MinRNN", "coefficients", "g", "log_g", "mix", "recurrence", "scan"]

GATES = {"mingru": 2, "minlstm": 3}  # rows of weight_ih per unit: (z, c) and (f, i, c)
METHODS = ("auto", "scan", "recurrence")  # how a window is solved: auto is the recurrence on a CPU, else the scan


def g(x: torch.Tensor) -> torch.Tensor:
    """The candidate's activation: x + 1/2 for x >= 0, sigmoid(x) below (continuous, positive, growing)."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: torch.Tensor) -> torch.Tensor:
    """log g(x), computed without taking the log of a sigmoid that underflowed."""
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


def scan(log_a: torch.Tensor, log_b: torch.Tensor, log_h0: torch.Tensor) -> torch.Tensor:
    """log h (B, T, H) of h_t = a_t h_{t-1} + b_t for t = 1..T from h_0, given log a and log b (B, T, H) and
    log h_0 (B, 1, H) (-inf for a zero state)."""
    a_star = torch.cumsum(log_a, dim=1)  # log A_t
    terms = torch.cat([log_h0, log_b - a_star], dim=1)  # h_0, then b_s / A_s
    return a_star + torch.logcumsumexp(terms, dim=1)[:, 1:]


class _Recurrence(torch.autograd.Function):
    """h_t = a_t h_{t-1} + b_t over a window, time-major inside: one fused multiply-add per step forward,
    and backward the carried gradient c_t = dL/dh_t + a_{t+1} c_{t+1}, from which db_t = c_t,
    da_t = c_t h_{t-1} and dh_0 = a_1 c_1."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        a, b = a.transpose(0, 1).contiguous(), b.transpose(0, 1).contiguous()  # (T, B, H)
        out, h = torch.empty_like(b), h0
        for t in range(len(a)):
            h = torch.addcmul(b[t], a[t], h, out=out[t])
        ctx.save_for_backward(a, out, h0)
        return out.transpose(0, 1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, out, h0 = ctx.saved_tensors
        grad = grad.transpose(0, 1).contiguous()
        db = torch.empty_like(grad)
        carry = db[-1] = grad[-1]
        for t in range(len(a) - 2, -1, -1):
            carry = torch.addcmul(grad[t], a[t + 1], carry, out=db[t])
        da = db * torch.cat([h0[None], out[:-1]])
        return da.transpose(0, 1), db.transpose(0, 1), a[0] * db[0]


def recurrence(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """h (B, T, H) of h_t = a_t h_{t-1} + b_t for t = 1..T from h_0 (B, H), given a and b (B, T, H): a loop
    over time with a written-out backward pass, the same numbers as :func:`scan` in linear space."""
    return _Recurrence.apply(a, b, h0)


def coefficients(cell: str, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a and b (..., H) of the recurrence h_t = a_t h_{t-1} + b_t, from a layer's pre-activations (..., G*H)."""
    if cell == "mingru":
        z, c = pre.chunk(2, dim=-1)
        z = torch.sigmoid(z)
        return 1 - z, z * g(c)
    f, i, c = pre.chunk(3, dim=-1)
    # f / (f + i) = sigmoid(log f - log i), with log f = logsigmoid(f): finite where both gates underflow to 0
    d = F.logsigmoid(f) - F.logsigmoid(i)
    return torch.sigmoid(d), torch.sigmoid(-d) * g(c)


def mix(cell: str, pre: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """One step: the new state from the pre-activations (..., G*H) and the state h (..., H)."""
    a, b = coefficients(cell, pre)
    return torch.addcmul(b, a, h)


def _wide(x: torch.Tensor) -> torch.Tensor:
    """x in float32 at least (a bf16 or fp16 product from autocast), float64 kept."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class MinRNN(nn.Module):
    """A stack of minGRU or minLSTM layers with nn.GRU's interface: ``forward(x (B, T, E), h0 (L, B, H) or
    None) -> (out (B, T, H), h_n (L, B, H))``, batch first; ``dropout`` between layers; ``method`` one of
    :data:`METHODS`. The recurrence runs in float32 whatever the autocast (the matrix products follow it)."""

    def __init__(
        self, cell: str, input_size: int, hidden_size: int, num_layers: int, dropout: float = 0.0, method: str = "auto"
    ):
        super().__init__()
        if cell not in GATES:
            raise ValueError(f"cell must be one of {', '.join(GATES)}, got {cell!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if min(input_size, hidden_size, num_layers) < 1:
            raise ValueError(
                f"input_size, hidden_size and num_layers must be at least 1, got {input_size}, {hidden_size}, {num_layers}"
            )
        self.cell, self.hidden_size, self.num_layers, self.dropout = cell, hidden_size, num_layers, dropout
        self.method = method
        G, H = GATES[cell], hidden_size
        for k in range(num_layers):
            size = input_size if k == 0 else H
            bound = 1 / math.sqrt(size)  # nn.Linear's initialisation
            setattr(self, f"norm_weight_l{k}", nn.Parameter(torch.ones(size)))
            setattr(self, f"norm_bias_l{k}", nn.Parameter(torch.zeros(size)))
            setattr(self, f"weight_ih_l{k}", nn.Parameter(torch.empty(G * H, size).uniform_(-bound, bound)))
            setattr(self, f"bias_ih_l{k}", nn.Parameter(torch.empty(G * H).uniform_(-bound, bound)))

    def _gates(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Layer k's pre-activations (..., G*H) of its input x (..., in), in float32."""
        u = F.layer_norm(x, x.shape[-1:], getattr(self, f"norm_weight_l{k}"), getattr(self, f"norm_bias_l{k}"))
        return _wide(F.linear(u, getattr(self, f"weight_ih_l{k}"), getattr(self, f"bias_ih_l{k}")))

    def _log_ab(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log a and log b (..., H) of the recurrence, from the pre-activations (..., G*H)."""
        if self.cell == "mingru":
            z, c = pre.chunk(2, dim=-1)
            return -F.softplus(z), -F.softplus(-z) + log_g(c)  # log(1 - z), log z + log g(c)
        f, i, c = pre.chunk(3, dim=-1)
        log_f, log_i = -F.softplus(-f), -F.softplus(-i)
        total = torch.logaddexp(log_f, log_i)
        return log_f - total, log_i - total + log_g(c)

    def _layer(self, k: int, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        """Layer k's states (B, T, H) over a window x (B, T, in) from h0 (B, H)."""
        pre = self._gates(k, x)
        if self.method == "recurrence" or (self.method == "auto" and x.device.type == "cpu"):
            return recurrence(*coefficients(self.cell, pre), _wide(h0))
        log_a, log_b = self._log_ab(pre)
        return torch.exp(scan(log_a, log_b, torch.log(_wide(h0)).unsqueeze(1)))

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        B, H = x.shape[0], self.hidden_size
        if x.dim() != 3 or x.shape[1] < 1:
            raise ValueError(f"x must be (batch, time, features) with time at least 1, got {tuple(x.shape)}")
        if h0 is None:
            h0 = x.new_zeros(self.num_layers, B, H, dtype=torch.float32)
        elif h0.shape != (self.num_layers, B, H):
            raise ValueError(f"h0 must be (layers, batch, hidden) = {(self.num_layers, B, H)}, got {tuple(h0.shape)}")
        last = []
        for k in range(self.num_layers):
            if k > 0 and self.dropout and self.training:
                x = F.dropout(x, self.dropout, training=True)
            h = self._layer(k, x, h0[k])  # (B, T, H)
            last.append(h[:, -1])
            x = h + x if x.shape[-1] == H else h  # the residual path, where the widths agree
        return x, torch.stack(last)

    def step(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: x (B, E), h (L, B, H) -> the top layer's output (B, H), the new h (L, B, H); the same
        recurrence as :meth:`forward`."""
        new = []
        for k in range(self.num_layers):
            state = mix(self.cell, self._gates(k, x), h[k])
            new.append(state)
            x = state + x if x.shape[-1] == self.hidden_size else state
        return x, torch.stack(new)
