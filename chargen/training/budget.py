"""How long a run trains and at what rate: the step budget, the learning-rate schedule, and the
wall clock of a --max-time budget as the trainer spends it (:class:`Budget`)."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from ..config import TrainConfig
from ..errors import ChargenError

if TYPE_CHECKING:  # types only: this module stays free of torch
    from ..model.scoring import SampleScorer
    from ..runs.metrics import Timing


def schedule_lr(
    cfg: TrainConfig, step: int, elapsed: float, decay_steps: int | None, decay_time: float | None
) -> float:
    """Linear warmup, then constant, or a cosine or a straight line down to ``min_lr_ratio * lr``.

    Written by hand rather than with ``torch.optim.lr_scheduler`` because the
    cosine's length can be wall-clock time (a ``--max-time`` budget), which a
    step-counting scheduler cannot follow, and because the rate must be a pure
    function of (step, elapsed) for an exact resume.

    The warmup counts steps while a time budget's cosine follows the clock, so
    during the warmup the rate is the lower of the two: a budget too short for
    the warmup's steps ends low on the ramp (never above its cosine), and leaving the warmup never
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
    if cfg.schedule == "linear":
        decayed = floor + (cfg.lr - floor) * (1.0 - progress)
    else:
        decayed = floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return decayed if warm is None else min(warm, decayed)


def step_budget(cfg: TrainConfig, batches_per_epoch: int) -> int | None:
    """The run's length in steps, from --max-steps and --epochs (whichever is smaller), or None."""
    limits = []
    if cfg.max_steps is not None:
        limits.append(cfg.max_steps)
    if cfg.epochs is not None:
        limits.append(math.ceil(cfg.epochs * batches_per_epoch))
    return min(limits) if limits else None


class Budget:
    """What is left of a run's budget: its steps, and under --max-time its wall-clock seconds (evaluations
    and checkpoints included, carried across resumes), less what the end of the run needs.

    It reads the timings the trainer measures (``timing``) and the validation scorer's estimate; it decides
    only when to stop and by when an evaluation must end.
    """

    def __init__(self, cfg: TrainConfig, total_steps: int | None, timing: Timing, scorer: SampleScorer):
        self.total_steps, self.max_time, self.preview_chars = total_steps, cfg.max_time, cfg.preview_chars
        self.timing, self.scorer = timing, scorer
        self.wall_start = time.perf_counter()  # see start()
        self.time_up = False  # --max-time: no time left to train on

    def start(self, elapsed: float) -> None:
        """Start the clock, ``elapsed`` seconds (spent before a resume) in."""
        self.wall_start = time.perf_counter() - elapsed

    def elapsed(self, now: float | None = None) -> float:
        """Seconds spent at ``now`` (a ``time.perf_counter()`` reading; default: now)."""
        return (time.perf_counter() if now is None else now) - self.wall_start

    def spent(self, step: int, elapsed: float) -> bool:
        """Steps or epochs done; or no time left for one more step, the final evaluation and checkpoint."""
        if self.total_steps is not None and step >= self.total_steps:
            return True
        if self.max_time is not None and elapsed + self.timing.step + self.to_finish() >= self.max_time:
            self.time_up = True  # for good: a final evaluation quicker than foreseen does not reopen the run
        return self.time_up

    def to_finish(self) -> float:
        """Seconds the end of the run needs: the final checkpoint and evaluation."""
        return self.timing.checkpoint + self.final_eval_reserve()

    def final_eval_reserve(self) -> float:
        """Time kept for the final evaluation: its estimate with a margin, when that is at most half the
        budget (a longer one would leave too little to train: it is skipped instead)."""
        assert self.max_time is not None  # asked only of a --max-time budget
        reserve = 1.5 * self.eval_estimate() + min(0.5, 0.05 * self.max_time)  # and room for jitter
        return reserve if reserve <= self.max_time / 2 else 0.0

    def eval_estimate(self) -> float:
        """Seconds an evaluation takes: the last one's, or before any the scorer's estimate and the preview's."""
        if self.timing.evaluation is not None:
            return self.timing.evaluation
        per_chunk = self.scorer.seconds_per_chunk or 0.0
        return (self.scorer.estimate() or 0.0) + per_chunk / self.scorer.chunk * self.preview_chars

    def eval_deadline(self, final: bool) -> float | None:
        """When an evaluation must be over: the budget's end less the final checkpoint, and less the final
        evaluation's reserve for one that is not the final one."""
        if self.max_time is None:
            return None
        end = self.wall_start + self.max_time - self.timing.checkpoint
        return end if final else end - self.final_eval_reserve()

    def too_short(self, elapsed: float) -> ChargenError:
        """The error for a budget that ran out before the first step."""
        assert self.max_time is not None  # only a --max-time budget runs out
        left = self.max_time - elapsed
        return ChargenError(
            f"--max-time {self.max_time:g}s leaves no time to train: {max(left, 0):.2f}s are "
            "left, and one step, the final evaluation and checkpoint need about "
            f"{self.timing.step + self.to_finish():.2f}s; give a larger budget"
        )
