"""minGRU and minLSTM (Feng et al., 2024, "Were RNNs All We Needed?"): recurrent cells whose gates read the
input only, so that a layer over a whole window is a linear recurrence, solved at once by a parallel scan.

For one layer, with u the layer's input after a LayerNorm and the state h carried from the window before::

    minGRU:   z = sigmoid(W_z u + b_z),  c = g(W_c u + b_c),  h_t = (1 - z_t) h_{t-1} + z_t c_t
    minLSTM:  f = sigmoid(W_f u + b_f),  i = sigmoid(W_i u + b_i),  c = g(W_c u + b_c),
              h_t = f'_t h_{t-1} + i'_t c_t  with  f' = f / (f + i),  i' = i / (f + i)

    g(x) = x + 1/2 for x >= 0, sigmoid(x) below: positive, so h stays positive and has a logarithm.

Both are h_t = a_t h_{t-1} + b_t with a, b > 0. Over T steps, h_t = A_t (h_0 + sum_{s<=t} b_s / A_s) with
A_t = a_1 ... a_t, which in log space is a cumulative sum and a cumulative log-sum-exp (``scan``): every
position at once, with no loop over time, and no overflow however long the window. Sampling steps the same
recurrence one character at a time (``MinRNN.step``).

Layers are stacked as pre-norm residual blocks: each layer's output is its input plus the cell's state
(the first layer's only where the embedding is as wide as the state). The gates of a min cell read the
input only, so depth is where the network mixes what the state holds; the residual path keeps a deep stack
trainable and the LayerNorm keeps the gates' inputs at one scale while the positive states accumulate.
The parameters keep nn.GRU's naming (``weight_ih_l{k}``, ``bias_ih_l{k}``) beside the norms'
(``norm_weight_l{k}``, ``norm_bias_l{k}``), so a run's weights file lists them the same way.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["GATES", "MinRNN", "g", "log_g", "scan"]

GATES = {"mingru": 2, "minlstm": 3}  # rows of weight_ih per unit: (z, c) and (f, i, c)


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


class MinRNN(nn.Module):
    """A stack of minGRU or minLSTM layers with nn.GRU's interface: ``forward(x (B, T, E), h0 (L, B, H) or
    None) -> (out (B, T, H), h_n (L, B, H))``, batch first; ``dropout`` between layers."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int, dropout: float = 0.0):
        super().__init__()
        if cell not in GATES:
            raise ValueError(f"cell must be one of {', '.join(GATES)}, got {cell!r}")
        self.cell, self.hidden_size, self.num_layers, self.dropout = cell, hidden_size, num_layers, dropout
        G, H = GATES[cell], hidden_size
        for k in range(num_layers):
            size = input_size if k == 0 else H
            bound = 1 / math.sqrt(size)  # nn.Linear's initialisation
            setattr(self, f"norm_weight_l{k}", nn.Parameter(torch.ones(size)))
            setattr(self, f"norm_bias_l{k}", nn.Parameter(torch.zeros(size)))
            setattr(self, f"weight_ih_l{k}", nn.Parameter(torch.empty(G * H, size).uniform_(-bound, bound)))
            setattr(self, f"bias_ih_l{k}", nn.Parameter(torch.empty(G * H).uniform_(-bound, bound)))

    def _gates(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Layer k's pre-activations (..., G*H) of its input x (..., in)."""
        u = F.layer_norm(x, x.shape[-1:], getattr(self, f"norm_weight_l{k}"), getattr(self, f"norm_bias_l{k}"))
        return F.linear(u, getattr(self, f"weight_ih_l{k}"), getattr(self, f"bias_ih_l{k}"))

    def _log_ab(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log a and log b (..., H) of the recurrence, from the pre-activations (..., G*H)."""
        if self.cell == "mingru":
            z, c = pre.chunk(2, dim=-1)
            return -F.softplus(z), -F.softplus(-z) + log_g(c)  # log(1 - z), log z + log g(c)
        f, i, c = pre.chunk(3, dim=-1)
        log_f, log_i = -F.softplus(-f), -F.softplus(-i)
        total = torch.logaddexp(log_f, log_i)
        return log_f - total, log_i - total + log_g(c)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        B, H = x.shape[0], self.hidden_size
        if h0 is None:
            h0 = x.new_zeros(self.num_layers, B, H)
        last = []
        for k in range(self.num_layers):
            if k > 0 and self.dropout and self.training:
                x = F.dropout(x, self.dropout, training=True)
            log_a, log_b = self._log_ab(self._gates(k, x))  # (B, T, H) each
            h = torch.exp(scan(log_a, log_b, torch.log(h0[k]).unsqueeze(1)))  # (B, T, H)
            last.append(h[:, -1])
            x = h + x if x.shape[-1] == H else h  # the residual path, where the widths agree
        return x, torch.stack(last)

    def step(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: x (B, E), h (L, B, H) -> the top layer's output (B, H), the new h (L, B, H); the same
        recurrence as :meth:`forward`, in linear space."""
        new = []
        for k in range(self.num_layers):
            pre = self._gates(k, x)
            if self.cell == "mingru":
                z, c = pre.chunk(2, dim=-1)
                state = torch.lerp(h[k], g(c), torch.sigmoid(z))  # (1 - z) h + z g(c)
            else:
                state = _lstm_mix(pre, h[k])
            new.append(state)
            x = state + x if x.shape[-1] == self.hidden_size else state
        return x, torch.stack(new)


def _lstm_mix(pre: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """minLSTM's new state from its pre-activations (..., 3H) and the state h: f' h + i' g(c)."""
    f_pre, i_pre, c = pre.chunk(3, dim=-1)
    f, i = torch.sigmoid(f_pre), torch.sigmoid(i_pre)
    return (f * h + i * g(c)) / (f + i)
