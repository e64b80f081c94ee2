"""The language model: embedding -> LSTM, GRU, Elman RNN, minGRU or minLSTM stack -> output layer (a full or an
adaptive softmax).

``CharRNN.forward(ids, state)`` maps ids (B, T) and a carried state to logits
(B, T, V) and the state after the last step, so a long sequence can be run in
chunks: running it whole or chunk by chunk with the state handed on gives the
same logits (a test checks it). With ``targets`` it returns the mean loss
instead, the one training minimizes.

With the adaptive softmax (:class:`AdaptiveHead`) the "logits" are normalized
log-probabilities; everything downstream (softmax, temperature, top-k, top-p)
reads them the same way, since a log-softmax leaves log-probabilities as they are.
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ADAPTIVE_DIV, MIN_CELLS, ModelConfig
from .minrnn import MinRNN
from .precision import rnn_under_autocast

__all__ = [
    "AdaptiveHead",
    "CharRNN",
    "LockedDropout",
    "ModelConfig",
    "detach_state",
    "state_from_tensors",
    "state_tensors",
]

# The state an RNN carries from one step to the next: h (layers, B, H) for a GRU, the pair (h, c) for an LSTM.
RNNState: TypeAlias = torch.Tensor | tuple[torch.Tensor, ...]


class AdaptiveHead(nn.AdaptiveLogSoftmaxWithLoss):
    """PyTorch's adaptive softmax (Grave et al., 2017) over the characters in frequency order.

    Its clusters cover ranges of that order: the likeliest characters sit in the
    first cluster (the "head", also scored for every character as a whole
    cluster), rarer ones in tails reached through narrower projections. A
    character's log-probability is exact: its cluster's log-probability plus its
    own within the cluster. ``rank`` (stored with the weights) gives each id its
    place in the order, so the vocabulary's ids never move.

    Log-probabilities are computed in float32 whatever the autocast dtype, and
    every tail is run on each call, if on no rows, so that every parameter takes
    part in every step (DistributedDataParallel needs it).
    """

    rank: torch.Tensor  # buffers, registered in __init__
    bounds: torch.Tensor

    def __init__(self, hidden_size: int, vocab_size: int, cutoffs: list[int]):
        super().__init__(hidden_size, vocab_size, list(cutoffs), div_value=float(ADAPTIVE_DIV), head_bias=True)
        self.register_buffer("rank", torch.arange(vocab_size))
        self.register_buffer("bounds", torch.tensor(self.cutoffs[:-1]), persistent=False)

    @torch.no_grad()
    def set_order(self, counts: np.ndarray) -> None:
        """Order the characters by their training counts, likeliest first (ties by id)."""
        order = torch.from_numpy(np.argsort(-np.asarray(counts, dtype=np.int64), kind="stable"))
        self.rank[order.to(self.rank.device)] = torch.arange(self.n_classes, device=self.rank.device)

    def log_probs(self, h: torch.Tensor) -> torch.Tensor:
        """h (..., H) -> log-probabilities (..., V) of every character, in the vocabulary's order."""
        shape, h = h.shape[:-1], h.reshape(-1, self.in_features)
        head = torch.log_softmax(self.head(h).float(), dim=-1)  # (N, shortlist + clusters)
        c0 = self.shortlist_size
        parts = [head[:, :c0]]
        for i, tail in enumerate(self.tail):
            parts.append(torch.log_softmax(tail(h).float(), dim=-1) + head[:, c0 + i : c0 + i + 1])
        return torch.cat(parts, dim=-1).index_select(-1, self.rank).view(*shape, self.n_classes)

    def forward(  # type: ignore[override]  # the targets' log-probabilities, not nn's (output, loss) pair
        self, h: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """h (..., H), targets (...) -> the targets' log-probabilities (...), float32; each character costs
        the head and its own cluster only."""
        shape, h = targets.shape, h.reshape(-1, self.in_features)
        r = self.rank[targets.reshape(-1)]
        cluster = torch.bucketize(r, self.bounds, right=True)  # 0: the head's own characters
        head = torch.log_softmax(self.head(h).float(), dim=-1)
        c0 = self.shortlist_size
        out = head.gather(1, torch.where(cluster == 0, r, c0 - 1 + cluster)[:, None])[:, 0]
        # The rows of each cluster, in order: one stable sort, and the clusters' sizes read back in one copy
        # (a host sync per call, which a data-dependent split cannot avoid; a mask per cluster would cost one each).
        order = torch.sort(cluster, stable=True).indices
        sizes = torch.bincount(cluster, minlength=len(self.tail) + 1).tolist()
        for i, (tail, rows) in enumerate(zip(self.tail, order.split(sizes)[1:])):
            lp = torch.log_softmax(tail(h.index_select(0, rows)).float(), dim=-1)
            local = r.index_select(0, rows) - self.cutoffs[i]
            out = out.index_add(0, rows, lp.gather(1, local[:, None])[:, 0])
        return out.view(shape)


class LockedDropout(nn.Module):
    """Dropout with one mask per sequence, the same at every time step (Gal & Ghahramani 2016; AWD-LSTM):
    (B, T, D) -> (B, T, D), the identity in eval mode or at p = 0."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty(x.shape[0], 1, x.shape[2], device=x.device, dtype=x.dtype).bernoulli_(keep)
        return x * mask.div_(keep)


class CharRNN(nn.Module):
    """Embedding -> locked dropout -> ``nn.LSTM``/``nn.GRU``/``nn.RNN``/:class:`MinRNN` (batch first) -> dropout,
    locked dropout -> output layer."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = c = config
        assert c.embedding_size is not None  # ModelConfig.__post_init__ sets it
        self.embedding = nn.Embedding(c.vocab_size, c.embedding_size)
        # The RNN applies dropout between layers only; the head gets its own below.
        between = c.dropout if c.num_layers > 1 else 0.0
        self.rnn: nn.Module
        if c.cell in MIN_CELLS:
            self.rnn = MinRNN(c.cell, c.embedding_size, c.hidden_size, c.num_layers, dropout=between)
        else:
            rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[c.cell]  # nn.RNN: tanh
            self.rnn = rnn(c.embedding_size, c.hidden_size, c.num_layers, batch_first=True, dropout=between)
        self.drop = nn.Dropout(c.dropout)
        self.input_drop, self.output_drop = LockedDropout(c.input_dropout), LockedDropout(c.output_dropout)
        self.head: AdaptiveHead | nn.Linear
        if c.adaptive:
            assert c.cutoffs is not None  # an adaptive config has its cutoffs (ModelConfig.resolve_softmax)
            self.head = AdaptiveHead(c.hidden_size, c.vocab_size, c.cutoffs)
        else:
            self.head = nn.Linear(c.hidden_size, c.vocab_size)
            if c.tie_weights:
                self.head.weight = self.embedding.weight
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.embedding.weight, std=0.1)
        for name, p in self.rnn.named_parameters():
            if name.startswith("bias"):  # (a min cell's LayerNorm keeps its own: ones and zeros)
                nn.init.zeros_(p)
                if self.config.cell == "lstm":
                    # Forget-gate bias 1 (gates are i, f, g, o): remember by default early on.
                    H = self.config.hidden_size
                    with torch.no_grad():
                        p[H : 2 * H].fill_(0.5)  # b_ih and b_hh both get 0.5: sum 1
        head = self.head  # an AdaptiveHead exactly when the config is adaptive
        nn.init.zeros_(head.head.bias if isinstance(head, AdaptiveHead) else head.bias)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> RNNState:
        """The zero state for ``batch_size`` sequences."""
        c = self.config
        device = device if device is not None else self.embedding.weight.device
        dtype = dtype or self.embedding.weight.dtype
        h = torch.zeros(c.num_layers, batch_size, c.hidden_size, device=device, dtype=dtype)
        return (h, h.clone()) if c.cell == "lstm" else h

    def forward(
        self, ids: torch.Tensor, state: RNNState | None = None, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, RNNState]:
        """ids (B, T) -> logits (B, T, V), state after the last step; with targets (B, T), the mean loss
        over them (nats) in place of the logits."""
        h, state = self.features(ids, state)
        if targets is None:
            return self.logits(h), state
        if self.config.adaptive:
            return -self.head(h, targets).mean(), state
        return F.cross_entropy(self.head(h).float().flatten(0, 1), targets.flatten()), state

    def features(self, ids: torch.Tensor, state: RNNState | None = None) -> tuple[torch.Tensor, RNNState]:
        """ids (B, T) -> what the output layer reads (B, T, H), state after the last step."""
        x = self.input_drop(self.embedding(ids))
        if rnn_under_autocast(x.device.type):
            out, state = self.rnn(x, state)  # (B, T, H)
        else:  # float32 inside this autocast: see precision.precision_plan
            with torch.autocast(x.device.type, enabled=False):
                out, state = self.rnn(x.float(), _as_float(state))
        return self.output_drop(self.drop(out)), state

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Output layer: (..., H) -> (..., V); log-probabilities with the adaptive softmax."""
        head = self.head  # an AdaptiveHead exactly when the config is adaptive
        return head.log_probs(h) if isinstance(head, AdaptiveHead) else head(h)

    def target_log_probs(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (float32) of ``targets`` (...) given the output layer's input h (..., H)."""
        if self.config.adaptive:
            return self.head(h, targets)
        return torch.log_softmax(self.head(h).float(), dim=-1).gather(-1, targets[..., None])[..., 0]


def _as_float(state: RNNState | None) -> RNNState | None:
    if state is None or isinstance(state, torch.Tensor):
        return None if state is None else state.float()
    return tuple(s.float() for s in state)


def detach_state(state: RNNState | None, dtype: torch.dtype | None = None) -> RNNState | None:
    """Cut the graph behind a carried state (truncated BPTT), optionally in ``dtype``; no copy otherwise."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach().to(dtype) if dtype else s.detach() for s in state)
    return state.detach().to(dtype) if dtype else state.detach()


def zero_where_not(ok: torch.Tensor, state: RNNState) -> RNNState:
    """The state where ``ok`` (a bool scalar tensor), else zeros: a reset decided on the device."""
    if isinstance(state, tuple):
        return tuple(torch.where(ok, s, torch.zeros_like(s)) for s in state)
    return torch.where(ok, state, torch.zeros_like(state))


def state_tensors(state: RNNState) -> dict[str, torch.Tensor]:
    """A state as named tensors, for safetensors."""
    if isinstance(state, tuple):
        return {"h": state[0], "c": state[1]}
    return {"h": state}


def state_from_tensors(tensors: dict[str, torch.Tensor], cell: str) -> RNNState:
    return (tensors["h"], tensors["c"]) if cell == "lstm" else tensors["h"]
