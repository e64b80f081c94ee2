"""Fast single-step decoding and the sampling rules.

Calling ``nn.LSTM`` once per character costs far more than its arithmetic:
each call validates arguments, picks a kernel and allocates. ``FastStep``
applies the same weights directly: prepared once (the first layer's input
projection becomes a (V, 4H) lookup table, biases are pre-summed), gates
fused into one matmul per layer, under ``inference_mode``. It computes what
``nn.LSTM``/``nn.GRU`` compute, in the same gate order (a test checks it).

Random draws come from a counter-based generator (splitmix64 of seed, row and
step), not from a shared RNG: a call's draws depend only on its own seed, so
samplers are safe to share between threads, results are the same on every
device, and row ``i`` of a batch drawn with seed ``s`` is exactly the single
sample drawn with seed ``s + i``.
"""

from __future__ import annotations

import numpy as np
import torch

from .model import CharRNN

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def uniforms(seeds: np.ndarray, start: int, count: int) -> np.ndarray:
    """Uniform floats in [0, 1) for each seed (rows) and steps ``start .. start+count`` (columns)."""
    seeds = np.asarray(seeds, dtype=np.uint64)[:, None]
    steps = np.arange(start, start + count, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by definition
        x = seeds * _GOLDEN + (steps + np.uint64(1)) * _M2
        x ^= x >> np.uint64(30)
        x *= _M1
        x ^= x >> np.uint64(27)
        x *= _M2
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))     # (rows, count)


def pick(logits: torch.Tensor, u: torch.Tensor | None, temperature: float, top_k: int | None,
         top_p: float | None, banned: int | None) -> torch.Tensor:
    """Next ids (B,) from logits (B, V): greedy at temperature 0, else inverse-CDF sampling with u (B,)."""
    logits = logits.float()
    if banned is not None:                                 # never emit the unknown token
        logits = logits.index_fill(-1, torch.tensor([banned], device=logits.device), float("-inf"))
    if temperature == 0 or top_k == 1:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]          # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1).double()                      # (B, V)
    if top_p is not None and top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(dim=-1) - sorted_p                     # mass strictly before each
        sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)           # the first always stays
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    cdf = probs.cumsum(dim=-1)                                          # (B, V)
    target = u.to(cdf) * cdf[:, -1]
    idx = (cdf <= target[:, None]).sum(dim=-1)
    # Never land on a zero-probability id through rounding at the top end.
    idx = torch.minimum(idx, (probs > 0).long().cumsum(-1).argmax(-1))
    return idx


class FastStep:
    """One recurrent step of a CharRNN with prepared weights; state is per call."""

    def __init__(self, model: CharRNN):
        c = model.config
        self.cell, self.L, self.H = c.cell, c.num_layers, c.hidden_size
        rnn = model.rnn
        with torch.no_grad():
            emb = model.embedding.weight                                     # (V, E)
            self.layers = []
            for layer in range(c.num_layers):
                w_ih = getattr(rnn, f"weight_ih_l{layer}")                    # (G*H, in)
                w_hh = getattr(rnn, f"weight_hh_l{layer}")                    # (G*H, H)
                b_ih = getattr(rnn, f"bias_ih_l{layer}")
                b_hh = getattr(rnn, f"bias_hh_l{layer}")
                if c.cell == "lstm":
                    if layer == 0:   # input projection of every id, biases folded in: (V, 4H)
                        table = torch.addmm(b_ih + b_hh, emb, w_ih.t())
                        self.layers.append((table, w_hh.t().contiguous()))
                    else:            # one matmul over [x, h]: (in + H, 4H)
                        w = torch.cat([w_ih, w_hh], dim=1).t().contiguous()
                        self.layers.append((b_ih + b_hh, w))
                else:  # GRU keeps input and hidden parts apart: r gates only the hidden part of n
                    if layer == 0:
                        self.layers.append((torch.addmm(b_ih, emb, w_ih.t()), None, w_hh.t().contiguous(), b_hh))
                    else:
                        self.layers.append((b_ih, w_ih.t().contiguous(), w_hh.t().contiguous(), b_hh))
            self.head_w = model.head.weight.t().contiguous()                # (H, V)
            self.head_b = model.head.bias.clone()
        self.device = self.head_w.device

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor, state) -> tuple[torch.Tensor, object]:
        """ids (B,), state as nn.LSTM/nn.GRU keep it -> logits (B, V), new state."""
        H = self.H
        if self.cell == "lstm":
            h_all, c_all = state
            hs, cs = [], []
            x = None
            for layer, (a, w) in enumerate(self.layers):
                h, c = h_all[layer], c_all[layer]                               # (B, H)
                if layer == 0:
                    gates = torch.addmm(a.index_select(0, ids), h, w)           # (B, 4H)
                else:
                    gates = torch.addmm(a, torch.cat([x, h], dim=1), w)
                i, f, g, o = gates.split(H, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                hs.append(h)
                cs.append(c)
                x = h
            new_state = (torch.stack(hs), torch.stack(cs))
        else:
            h_all = state
            hs = []
            x = None
            for layer, (gi_src, w_ih, w_hh, b_hh) in enumerate(self.layers):
                h = h_all[layer]
                gi = gi_src.index_select(0, ids) if layer == 0 else torch.addmm(gi_src, x, w_ih)  # (B, 3H)
                gh = torch.addmm(b_hh, h, w_hh)                                  # (B, 3H)
                i_r, i_z, i_n = gi.split(H, dim=1)
                h_r, h_z, h_n = gh.split(H, dim=1)
                r = torch.sigmoid(i_r + h_r)
                z = torch.sigmoid(i_z + h_z)
                n = torch.tanh(i_n + r * h_n)
                h = n + z * (h - n)                                              # (1 - z) * n + z * h
                hs.append(h)
                x = h
            new_state = torch.stack(hs)
        logits = torch.addmm(self.head_b, x, self.head_w)                        # (B, V)
        return logits, new_state
