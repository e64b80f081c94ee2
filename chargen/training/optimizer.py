"""The optimizer training steps with: AdamW, and which parameters it decays."""

from __future__ import annotations

from typing import Any

import torch

from ..config import TrainConfig
from ..model.network import CharRNN
from .guard import DEFERRED_ON

__all__ = ["adamw", "param_groups"]


def adamw(model: CharRNN, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW at ``cfg.lr`` with ``cfg.weight_decay`` (see :func:`param_groups`).

    beta2 0.99 rather than Adam's default 0.999 (as nanoGPT's character-level recipe does): a step sees few
    targets (B*T characters), and a shorter memory of squared gradients lets the step size follow the fast
    early changes of short, high-learning-rate runs like the cpu preset's. Fused AdamW where the step guard
    keeps its decision on the device (it reads found_inf there)."""
    fused = {"fused": True} if device.type in DEFERRED_ON else {}
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.99), **fused)


def param_groups(model: CharRNN, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW's parameter groups: every parameter decays but a min cell's LayerNorm weights and biases, which
    set the scale of the gates' inputs rather than map one thing to another (decaying the gain toward 0 would
    shrink every gate's input). The other cells have one group."""
    named = list(model.named_parameters())
    norms = [p for name, p in named if name.startswith("rnn.norm_")]
    groups: list[dict[str, Any]] = [
        {"params": [p for name, p in named if not name.startswith("rnn.norm_")], "weight_decay": weight_decay}
    ]
    return groups + [{"params": norms, "weight_decay": 0.0}] if norms else groups
