"""Scoring text under a model with the state carried: the one implementation behind training's
validation, ``chargen eval`` and ``Sampler.score``.

A :class:`StreamScorer` reads B streams of ids that arrive in pieces. Each
piece's first id is predicted from the last id of the piece before (or from
the stream's first input) and the state carried from it, so a text scored in
pieces gets exactly the log-probabilities it gets whole.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

IGNORE = -100  # a padded target: not scored


class StreamScorer:
    """Per-id log-probabilities of B streams read piece by piece (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, first_inputs: torch.Tensor, autocast=contextlib.nullcontext):
        self.model = model
        self.prev = first_inputs            # (B,) the id before each stream's next target
        self.state = None
        self.autocast = autocast

    @torch.no_grad()
    def __call__(self, targets: torch.Tensor) -> torch.Tensor:
        """targets (B, t) int64, IGNORE where padded -> log-probabilities (B, t) float64, 0 where padded."""
        x = torch.cat([self.prev[:, None], targets[:, :-1]], dim=1).clamp(min=0)   # (B, t)
        with self.autocast():
            logits, self.state = self.model(x, self.state)                         # (B, t, V)
        lp = torch.log_softmax(logits.float(), dim=-1)
        lp = lp.gather(-1, targets.clamp(min=0)[..., None])[..., 0].double()        # (B, t)
        self.prev = targets[:, -1]
        return lp.masked_fill(targets == IGNORE, 0.0)


def streams_loss(model: torch.nn.Module, ids: np.ndarray, prev_id: int, *, batch_size: int = 32,
                 chunk: int = 256, device: torch.device, autocast=contextlib.nullcontext) -> tuple[float, int]:
    """Summed loss (nats) over every id of ``ids``, the first predicted from ``prev_id``.

    The ids are cut into ``batch_size`` contiguous streams of equal length (the
    last padded with ignored targets), each read start to end in chunks of
    ``chunk`` steps with its state carried, so every id is scored exactly once.
    Returns ``(total nats, count)``.
    """
    n = len(ids)
    if n == 0:
        return 0.0, 0
    B = max(1, min(batch_size, n // max(1, chunk) or 1))
    S = -(-n // B)
    y = np.full(B * S, IGNORE, dtype=np.int64)
    y[:n] = ids
    # Stream b's first target is ids[b*S]; the id before it is ids[b*S - 1] (prev_id for stream 0).
    first = np.concatenate([[prev_id], y[S - 1:(B - 1) * S:S]]).astype(np.int64)
    targets = torch.from_numpy(y).view(B, S).to(device)                             # (B, S)
    was_training = model.training
    model.eval()
    scorer = StreamScorer(model, torch.from_numpy(first).to(device), autocast)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for lo in range(0, S, chunk):
        total += scorer(targets[:, lo:lo + chunk]).sum()
    model.train(was_training)
    return -float(total), n


def mean_loss(total: float, count: int) -> tuple[float, float]:
    """(nats per character, bits per character) of a summed loss."""
    nats = total / count if count else float("nan")
    return nats, nats / math.log(2)
