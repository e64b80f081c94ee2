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

import numpy as np

from .config import ModelConfig, SampleOptions
from .draws import uniforms

__all__ = ["NumpyStep", "log_softmax", "pick", "prime", "sample_ids"]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))          # never overflows, unlike 1 / (1 + exp(-x))


def log_softmax(x: np.ndarray) -> np.ndarray:
    """log_softmax over the last axis."""
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class NumpyStep:
    """A CharRNN step on NumPy arrays. The state is a list of per-layer arrays (B, H), as
    ``FastStep``'s: ``[hs, cs]`` for an LSTM, ``[hs]`` for a GRU."""

    def __init__(self, weights: dict[str, np.ndarray], config: ModelConfig):
        c = config
        self.config, self.cell, self.L, self.H = c, c.cell, c.num_layers, c.hidden_size
        w = {k: np.asarray(v, dtype=np.int64 if k == "head.rank" else np.float32) for k, v in weights.items()}
        emb = w["embedding.weight"]                                                  # (V, E)
        self.layers = []
        for k in range(c.num_layers):
            w_ih, w_hh = w[f"rnn.weight_ih_l{k}"], w[f"rnn.weight_hh_l{k}"]          # (G*H, in), (G*H, H)
            b_ih, b_hh = w[f"rnn.bias_ih_l{k}"], w[f"rnn.bias_hh_l{k}"]
            if c.cell == "lstm":
                if k == 0:
                    self.layers.append((emb @ w_ih.T + (b_ih + b_hh), np.ascontiguousarray(w_hh.T)))
                else:
                    self.layers.append((b_ih + b_hh, np.ascontiguousarray(np.concatenate([w_ih, w_hh], 1).T)))
            elif k == 0:  # GRU keeps input and hidden parts apart: r gates only the hidden part of n
                self.layers.append((emb @ w_ih.T + b_ih, None, np.ascontiguousarray(w_hh.T), b_hh))
            else:
                self.layers.append((b_ih, np.ascontiguousarray(w_ih.T), np.ascontiguousarray(w_hh.T), b_hh))
        if c.adaptive:
            self.head_w = np.ascontiguousarray(w["head.head.weight"].T)              # (H, shortlist + clusters)
            self.head_b = w["head.head.bias"]
            self.tails = [(np.ascontiguousarray(w[f"head.tail.{i}.0.weight"].T),
                           np.ascontiguousarray(w[f"head.tail.{i}.1.weight"].T)) for i in range(len(c.cutoffs))]
            self.rank = w["head.rank"]
        else:
            self.head_w = np.ascontiguousarray((w["head.weight"] if "head.weight" in w else emb).T)  # (H, V)
            self.head_b = w["head.bias"]

    @classmethod
    def from_file(cls, path, config: ModelConfig) -> "NumpyStep":
        from safetensors.numpy import load_file
        return cls(load_file(str(path)), config)

    def zero_state(self, batch: int) -> list:
        zeros = [np.zeros((batch, self.H), dtype=np.float32) for _ in range(self.L)]
        return [zeros, [z.copy() for z in zeros]] if self.cell == "lstm" else [zeros]

    def output(self, x: np.ndarray) -> np.ndarray:
        """The output layer: (B, H) -> logits (B, V); log-probabilities with the adaptive softmax."""
        if not self.config.adaptive:
            return x @ self.head_w + self.head_b
        head = log_softmax(x @ self.head_w + self.head_b)                            # (B, shortlist + clusters)
        c0 = self.config.cutoffs[0]
        parts = [head[:, :c0]]
        for i, (project, cluster) in enumerate(self.tails):
            parts.append(log_softmax((x @ project) @ cluster) + head[:, c0 + i:c0 + i + 1])
        return np.concatenate(parts, axis=1)[:, self.rank]

    def __call__(self, ids: np.ndarray, state: list) -> tuple[np.ndarray, list]:
        """ids (B,), per-layer state -> logits (B, V), new per-layer state."""
        H, x = self.H, None
        if self.cell == "lstm":
            hs, cs = state
            new_h, new_c = [], []
            for k, (a, w) in enumerate(self.layers):
                if k == 0:
                    gates = a[ids] + hs[0] @ w                                        # (B, 4H)
                else:
                    gates = a + np.concatenate([x, hs[k]], axis=1) @ w
                i, f, o = _sigmoid(gates[:, :H]), _sigmoid(gates[:, H:2 * H]), _sigmoid(gates[:, 3 * H:])
                c = f * cs[k] + i * np.tanh(gates[:, 2 * H:3 * H])
                x = o * np.tanh(c)
                new_h.append(x)
                new_c.append(c)
            state = [new_h, new_c]
        else:
            (hs,) = state
            new_h = []
            for k, (gi_src, w_ih, w_hh, b_hh) in enumerate(self.layers):
                h = hs[k]
                gi = gi_src[ids] if k == 0 else x @ w_ih + gi_src                      # (B, 3H)
                gh = h @ w_hh + b_hh
                r = _sigmoid(gi[:, :H] + gh[:, :H])
                z = _sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
                n = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
                x = n + z * (h - n)                                                   # (1 - z) * n + z * h
                new_h.append(x)
            state = [new_h]
        return self.output(x), state


def prime(step: NumpyStep, ids: list[int], batch: int = 1) -> tuple[np.ndarray, list]:
    """Logits (batch, V) for the character after ``ids`` (the start id first), and the state: the ids
    read one step at a time from the zero state."""
    state = step.zero_state(1)
    for i in ids:
        logits, state = step(np.array([i]), state)
    return np.repeat(logits, batch, axis=0), [[np.repeat(h, batch, axis=0) for h in layer] for layer in state]


_BLOCK = 256  # steps of uniforms drawn at a time


def sample_ids(step: NumpyStep, logits: np.ndarray, state: list, seeds: np.ndarray, opts: SampleOptions,
               banned: int | None = None):
    """``decode.sample_ids`` on NumPy: the next ids (B,) ``opts.length`` times, row ``i`` drawn from
    ``seeds[i]``, one step per character after the first; ``banned`` is never drawn."""
    greedy = opts.temperature == 0 or opts.top_k == 1
    u_block = None
    for t in range(opts.length):
        u = None
        if not greedy:
            if t % _BLOCK == 0:
                u_block = uniforms(seeds, t, _BLOCK)                                  # (B, BLOCK)
            u = u_block[:, t % _BLOCK]
        ids = pick(logits, u, opts.temperature, opts.top_k, opts.top_p, banned)    # (B,)
        yield ids
        if t + 1 < opts.length:
            logits, state = step(ids, state)


def pick(logits: np.ndarray, u: np.ndarray | None, temperature: float, top_k: int | None,
         top_p: float | None, banned: int | None) -> np.ndarray:
    """Next ids (B,) from logits (B, V), by ``decode.pick``'s rules (u (B,) in [0, 1))."""
    if banned is not None:                                   # never emit the unknown token
        logits = logits.copy()
        logits[:, banned] = -np.inf
    if temperature == 0 or top_k == 1:
        return logits.argmax(axis=-1)
    x = logits.astype(np.float64)
    V = x.shape[-1]
    if temperature != 1.0:
        x = (x - x.max(axis=-1, keepdims=True)) / temperature
    if top_k is not None and top_k < V:
        kth = np.partition(x, V - top_k, axis=-1)[:, V - top_k:V - top_k + 1]       # (B, 1)
        x = np.where(x < kth, -np.inf, x)
    probs = np.exp(x - x.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)                                       # (B, V)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, axis=-1, kind="stable")   # among ties the lower ids stay, as in torch
        sorted_p = np.take_along_axis(probs, order, axis=-1)
        before = np.cumsum(sorted_p, axis=-1) - sorted_p
        sorted_p = np.where(before >= top_p, 0.0, sorted_p)
        probs = np.zeros_like(probs)
        np.put_along_axis(probs, order, sorted_p, axis=-1)
    cdf = np.cumsum(probs, axis=-1)
    total = cdf[:, -1:]
    target = np.minimum(np.asarray(u, dtype=np.float64)[:, None] * total, np.nextafter(total, 0.0))
    return (cdf <= target).sum(axis=-1)                     # searchsorted(right=True), row by row
