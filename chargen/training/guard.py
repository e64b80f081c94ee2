"""The guard around each optimizer step: a step whose loss or gradient is not finite is skipped, and a run
that keeps producing them stops.

Reading a value back to the host waits for the device to finish: on the CPU that costs nothing, so each
step is read at once (``deferred=False``). On CUDA it would stall the queue every step, so the decision
stays on the device (``deferred=True``): fused AdamW skips its update where ``found_inf`` is 1 (or the
grad scaler's check does), the carried state is zeroed with ``torch.where``, and the counts are read once
per log line and before each checkpoint (:meth:`StepGuard.check`). A run that diverges then stops at the
next check, up to ``--log-every`` steps later, its checkpoints untouched by the bad steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import ChargenError
from ..runs.checkpoint import ResumeState
from ..runs.metrics import MetricsLog
from . import distributed

# Where the decision stays on the device: CUDA, whose optimizer is fused AdamW (see Trainer.__init__).
DEFERRED_ON = frozenset({"cuda"})


class StepGuard:
    """Takes (or skips) the optimizer step, counts the skipped ones, and stops a diverging run."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        device: torch.device,
        world_size: int,
        max_bad_steps: int,
        log: MetricsLog,
        diverged: Callable[[int, int], ChargenError],
    ):
        self.optimizer, self.scaler, self.world_size = optimizer, scaler, world_size
        self.max_bad_steps, self.log, self.diverged = max_bad_steps, log, diverged
        self.deferred = device.type in DEFERRED_ON
        if self.deferred:  # skipped, overflowed, streak, worst streak since the last check: on the device
            self.counts = torch.zeros(4, device=device)

    def step(
        self, loss: torch.Tensor, grad_norm: torch.Tensor, progress: ResumeState
    ) -> tuple[torch.Tensor, bool | torch.Tensor]:
        """Step where ``loss`` and ``grad_norm`` are finite; returns the loss to log (the mean over ranks)
        and whether the step was taken: a bool, or on the device a bool tensor (no host sync)."""
        if self.deferred:
            return self._step_on_device(loss, grad_norm)
        if self.world_size > 1:
            loss, any_bad = distributed.mean_and_any_bad(loss, self.world_size)
            loss_ok = not bool(any_bad)
        else:
            loss_ok = bool(torch.isfinite(loss))
        if loss_ok and bool(torch.isfinite(grad_norm)):
            self.scaler.step(self.optimizer)
            self.scaler.update()
            progress.bad_streak = 0
            return loss, True
        if loss_ok and self.scaler.is_enabled():
            # fp16: gradients that overflow the loss scale are the grad scaler's ordinary business, not
            # divergence. It skips the update and lowers the scale; the carried state stays.
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.log.event(progress.step, "scale_overflow", scale=self.scaler.get_scale())
            return loss, False
        self.optimizer.zero_grad(set_to_none=True)
        progress.bad_streak += 1
        self.log.event(progress.step, "nonfinite", loss=float(loss), grad_norm=float(grad_norm))
        if self.scaler.is_enabled():
            self.scaler.update(self.scaler.get_scale() / 2)
        if progress.bad_streak >= self.max_bad_steps:
            self.log.event(progress.step, "stopped", reason="nonfinite")
            raise self.diverged(progress.bad_streak, progress.step)
        return loss, False

    def _step_on_device(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.world_size > 1:
            loss, loss_bad = distributed.mean_and_bad(loss, self.world_size)
        else:
            loss_bad = ~torch.isfinite(loss)
        grad_bad = ~torch.isfinite(grad_norm)
        if self.scaler.is_enabled():  # its own check of the gradients skips the update (fused: on the device)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            opt = self.optimizer  # fused AdamW reads these two: it leaves everything as it was where found_inf is 1
            opt.grad_scale, opt.found_inf = None, (loss_bad | grad_bad).float()  # type: ignore[attr-defined]
            opt.step()
            del opt.found_inf  # type: ignore[attr-defined]
        bad = loss_bad if self.scaler.is_enabled() else loss_bad | grad_bad
        c = self.counts
        streak = (c[2] + 1) * bad
        c.copy_(torch.stack([c[0] + bad, c[1] + (grad_bad & ~loss_bad), streak, torch.maximum(c[3], streak)]))
        return loss, ~(loss_bad | grad_bad)

    def check(self, progress: ResumeState) -> None:
        """On the device: read the counts since the last check (one host sync), log them, and stop a run
        whose non-finite steps ran ``max_bad_steps`` in a row. Nothing to do where each step was read."""
        if not self.deferred:
            return
        skipped, overflowed, streak, worst = (int(v) for v in self.counts.tolist())
        self.counts[[0, 1, 3]] = 0
        self.counts[3] = streak
        progress.bad_streak = streak
        if overflowed and self.scaler.is_enabled():
            self.log.event(progress.step, "scale_overflow", steps=overflowed, scale=self.scaler.get_scale())
        if skipped:
            self.log.event(progress.step, "nonfinite", steps=skipped, streak=streak)
        if worst >= self.max_bad_steps:
            self.log.event(progress.step, "stopped", reason="nonfinite")
            raise self.diverged(worst, progress.step)
