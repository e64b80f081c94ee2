"""The language model: embedding -> LSTM or GRU stack -> linear head.

``CharRNN.forward(ids, state)`` maps ids (B, T) and a carried state to logits
(B, T, V) and the state after the last step, so a long sequence can be run in
chunks: running it whole or chunk by chunk with the state handed on gives the
same logits (a test checks it).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .config import ModelConfig

__all__ = ["CharRNN", "ModelConfig", "detach_state", "state_tensors", "state_from_tensors"]


class CharRNN(nn.Module):
    """Embedding -> ``nn.LSTM``/``nn.GRU`` (batch first) -> dropout -> linear head."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = c = config
        self.embedding = nn.Embedding(c.vocab_size, c.embedding_size)
        rnn = nn.LSTM if c.cell == "lstm" else nn.GRU
        # nn.LSTM applies dropout between layers only; the head gets its own below.
        self.rnn = rnn(c.embedding_size, c.hidden_size, c.num_layers, batch_first=True,
                       dropout=c.dropout if c.num_layers > 1 else 0.0)
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.hidden_size, c.vocab_size)
        if c.tie_weights:
            self.head.weight = self.embedding.weight
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.embedding.weight, std=0.1)
        for name, p in self.rnn.named_parameters():
            if name.startswith("bias"):
                nn.init.zeros_(p)
                if self.config.cell == "lstm":
                    # Forget-gate bias 1 (gates are i, f, g, o): remember by default early on.
                    H = self.config.hidden_size
                    with torch.no_grad():
                        p[H:2 * H].fill_(0.5)  # b_ih and b_hh both get 0.5: sum 1
        nn.init.zeros_(self.head.bias)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None):
        """The zero state for ``batch_size`` sequences."""
        c = self.config
        device = device if device is not None else self.head.weight.device
        dtype = dtype or self.head.weight.dtype
        h = torch.zeros(c.num_layers, batch_size, c.hidden_size, device=device, dtype=dtype)
        return (h, h.clone()) if c.cell == "lstm" else h

    def forward(self, ids: torch.Tensor, state=None):
        """ids (B, T) -> logits (B, T, V), state after the last step."""
        x = self.embedding(ids)                          # (B, T, E)
        out, state = self.rnn(x, state)                  # (B, T, H)
        logits = self.head(self.drop(out))               # (B, T, V)
        return logits, state


def detach_state(state, dtype: torch.dtype | None = None):
    """Cut the graph behind a carried state (truncated BPTT), optionally in ``dtype``; no copy otherwise."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach().to(dtype) if dtype else s.detach() for s in state)
    return state.detach().to(dtype) if dtype else state.detach()


def state_tensors(state) -> dict[str, torch.Tensor]:
    """A state as named tensors, for safetensors."""
    if isinstance(state, tuple):
        return {"h": state[0], "c": state[1]}
    return {"h": state}


def state_from_tensors(tensors: dict[str, torch.Tensor], cell: str):
    return (tensors["h"], tensors["c"]) if cell == "lstm" else tensors["h"]
