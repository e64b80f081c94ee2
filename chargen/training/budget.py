"""How long a run trains and at what rate: the step budget and the learning-rate schedule."""

from __future__ import annotations

import math

from ..config import TrainConfig


def schedule_lr(cfg: TrainConfig, step: int, elapsed: float, decay_steps: int | None,
                decay_time: float | None) -> float:
    """Linear warmup, then constant or cosine down to ``min_lr_ratio * lr``.

    Written by hand rather than with ``torch.optim.lr_scheduler`` because the
    cosine's length can be wall-clock time (a ``--max-time`` budget), which a
    step-counting scheduler cannot follow, and because the rate must be a pure
    function of (step, elapsed) for an exact resume.

    The warmup counts steps while a time budget's cosine follows the clock, so
    during the warmup the rate is the lower of the two: a budget too short for
    the warmup's steps still ends at the floor, and leaving the warmup never
    jumps down to where the clock's cosine already is. A cosine in steps starts
    after the warmup, so there the warmup is the plain ramp.
    """
    warm = cfg.lr * (step + 1) / cfg.warmup_steps if cfg.warmup_steps and step < cfg.warmup_steps else None
    if cfg.schedule == "constant":
        return cfg.lr if warm is None else warm
    progress = 0.0
    if decay_steps:
        progress = (step - cfg.warmup_steps) / max(1, decay_steps - cfg.warmup_steps)
    if decay_time:
        progress = max(progress, elapsed / decay_time)
    progress = min(max(progress, 0.0), 1.0)
    floor = cfg.lr * cfg.min_lr_ratio
    cosine = floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return cosine if warm is None else min(warm, cosine)


def step_budget(cfg: TrainConfig, batches_per_epoch: int) -> int | None:
    """The run's length in steps, from --max-steps and --epochs (whichever is smaller), or None."""
    limits = []
    if cfg.max_steps is not None:
        limits.append(cfg.max_steps)
    if cfg.epochs is not None:
        limits.append(math.ceil(cfg.epochs * batches_per_epoch))
    return min(limits) if limits else None
