"""Training: stateful truncated BPTT with clipping, evaluation, checkpoints and exact resume.

Usage (the CLI is a thin layer over this)::

    from chargen import train
    result = train("tinyshakespeare", out="runs/shakespeare", preset="cpu", max_time=300)

One step: take batch k of the B streams (see batches.py), start from the
state batch k-1 ended with, detached so gradients stop at T steps (reset to
zeros where the streams restart), run forward and backward, clip the global
gradient norm, and take an AdamW step at the scheduled learning rate. A
non-finite loss or gradient skips the step; several in a row stop the run.

Everything a resume needs is in ``last/`` (see checkpoint.py). Batches are a
pure function of the step, the CPU RNG (dropout) is saved, and previews draw
from their own counter-based seed, so on CPU a run resumed at step N is bit
for bit the run that never stopped.

The loop is this module's; when to stop is budget.py's, evaluations are
evaluation.py's, and writing and reading ``last/`` is checkpointing.py's.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, cast

import torch

from ..data.batches import RandomWindows, StatefulStreams
from ..errors import ChargenError, Interrupted
from ..model.dtypes import state_dtype
from ..model.network import AdaptiveHead, CharRNN, RNNState, detach_state, zero_where_not
from ..model.precision import autocast, precision_plan, tf32
from ..runs.checkpoint import ResumeState, init_from_base
from ..runs.metrics import Meter, MetricsLog, ProgressBar, Timing
from ..signals import StopRequest, ctrl_c_ignored
from . import checkpointing, distributed
from .budget import Budget, schedule_lr, step_budget
from .evaluation import Evaluation, make_scorer
from .finetune import fine_tune_message
from .guard import StepGuard
from .launch import AlreadyFinished, Run, open_run
from .optimizer import adamw
from .result import TrainResult, finished_result


def train(
    source: str | os.PathLike[str] | None = None,
    *,
    out: str | os.PathLike[str],
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    corpora_dirs: Sequence[str | os.PathLike[str]] = (),
    cache_dir: str | os.PathLike[str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    preset: str | None = None,
    init_from: str | os.PathLike[str] | None = None,
    init_checkpoint: str | None = None,
    keep_vocab: bool = False,
    **options: Any,
) -> TrainResult:
    """Train a CharRNN on ``source`` into the run folder ``out``.

    ``options`` are fields of :class:`TrainConfig`, :class:`ModelConfig`
    (``cell``, ``num_layers``, ``hidden_size``, ``dropout``, ...) and of the
    prepare options (``val_fraction``, ``normalize``, ...), by field or flag
    name; ``preset`` and ``config_file`` (TOML) supply defaults that
    ``options`` override.

    ``init_from`` (a run folder) fine-tunes: the model starts from that run's weights (``init_checkpoint``
    best or last) and shape; characters of ``source`` it lacks are added to the vocabulary after its own
    (its ids never move), or with ``keep_vocab`` become the unknown token.
    """
    try:
        run = open_run(
            source,
            out=out,
            resume=resume,
            overwrite=overwrite,
            corpora_dirs=corpora_dirs,
            cache_dir=cache_dir,
            config_file=config_file,
            preset=preset,
            options=options,
            init_from=init_from,
            init_checkpoint=init_checkpoint,
            keep_vocab=keep_vocab,
        )
    except AlreadyFinished as done:
        distributed.shutdown()
        return finished_result(done)
    if progress is None:
        progress = sys.stderr.isatty()
    try:
        with tf32(run.device, run.train_config.tf32):
            result = Trainer(run, show_bar=progress).fit()
    except BaseException:
        run.abandon_if_unstarted()
        raise
    finally:
        run.close()
    # Every process reaches the end before any leaves the group: tearing it down while rank 0
    # still writes the last checkpoint aborts the others ("terminate called ..."). On an error
    # the group is left to the exiting process, so each rank still prints its one line.
    distributed.barrier()
    distributed.shutdown()
    return result


class Trainer:
    """The training loop over an opened run (see launch.open_run); ``fit`` tells the story."""

    def __init__(self, run: Run, show_bar: bool = False):
        self.run, self.cfg, self.device, self.show_bar = run, run.train_config, run.device, show_bar
        self.vocab = run.corpus.vocab
        cfg = self.cfg
        layout = StatefulStreams if cfg.layout == "stateful" else RandomWindows
        extra: dict[str, Any] = {"seed": cfg.seed} if cfg.layout == "random" else {}
        self.batches = layout(
            run.corpus.reader("train"),
            cfg.batch_size,
            cfg.bptt,
            rank=run.rank,
            world_size=run.world_size,
            device=self.device,
            **extra,
        )
        torch.manual_seed(cfg.seed)
        self.model = CharRNN(run.model_config).to(self.device)
        if run.init is not None and not run.resuming:
            init_from_base(self.model, run.init["weights"], run.init["vocab_size"])
        elif run.counts is not None and not run.resuming:
            cast(AdaptiveHead, self.model.head).set_order(run.counts)  # its clusters follow the counts
        self.model.train()
        self.optimizer = adamw(self.model, cfg, self.device)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=precision_plan(self.device.type, run.precision).grad_scaler
        )
        self.ddp_model = distributed.wrap_model(self.model, self.device, run.world_size)
        self.carried: RNNState | None = None  # the hidden state the last batch ended with (stateful layout), float32
        self.state_dtype = state_dtype(self.model, run.precision, self.device)
        self.progress = ResumeState(world_size=run.world_size)
        self.stop_reason: str | None = None  # "patience" (after an evaluation) or "schedule", on rank 0
        self.interrupted = False  # Ctrl-C asked the loop to stop after this step
        self.log = MetricsLog(run.dir, run.is_main)
        self.meter = Meter(self.device)
        self.guard = StepGuard(
            self.optimizer, self.scaler, self.device, run.world_size, cfg.max_bad_steps, self.log, self._diverged
        )
        self.timing = Timing(run.model_config.num_parameters)
        self.scorer = make_scorer(run.corpus, cfg, self.device, self.autocast)
        self.budget = Budget(cfg, step_budget(cfg, len(self.batches)), self.timing, self.scorer)
        self.evaluation = Evaluation(
            self.scorer, self.budget, cfg, self.vocab, self.log, self.timing, diverged=self._divergence
        )
        if run.resuming:
            self._restore()

    @property
    def inexact_resume(self) -> str | None:
        m = self.run.model_config
        return checkpointing.inexact_resume(self.device.type, m.num_layers, m.dropout, self.run.decay_time is not None)

    def autocast(self) -> torch.autocast:
        return autocast(self.run.precision, self.device)

    # -- the story of a run ----------------------------------------------------

    def fit(self) -> TrainResult:
        self._start()
        first_step = self.progress.step
        try:
            with StopRequest() as self.stop_request:
                while not self._should_stop():
                    self._step()
                    self._log_and_evaluate()
                    if self.progress.step % self.cfg.checkpoint_every == 0:
                        self._checkpoint()
                    self.progress.elapsed = self.budget.elapsed()
        except KeyboardInterrupt:  # a second Ctrl-C: the step it hit may be half done, so nothing is saved
            self._close_bar()
            claim = self.run.claim
            if claim is None:
                self.log.say(
                    f"interrupted again, inside step {self.progress.step + 1}; not saved: the last "
                    f"checkpoint stands. Resume with: {self.run.resume_hint()}"
                )
            else:
                kept = f"; {claim.out} still holds the run it was to replace" if claim.staged else ""
                self.log.say(
                    "interrupted again, before the run's first checkpoint: nothing to resume, and "
                    f"the new run is removed{kept}; start it again"
                )
            raise Interrupted from None
        finally:
            self._close_bar()
        if self.budget.time_up and self.progress.step == first_step and not self.interrupted:
            raise self.budget.too_short(self.progress.elapsed)
        if self.interrupted:
            self._on_interrupt()
            raise Interrupted
        return self._finish()

    def _start(self) -> None:
        """Open the log and the bar, start the clock, and say how the run starts."""
        self.log.open()
        self.bar = ProgressBar.open(self.show_bar and self.run.is_main, self.budget.total_steps, self.progress.step)
        self.log.bar = self.bar
        self.budget.start(self.progress.elapsed)
        if self.cfg.max_time is not None and self.run.is_main:
            self.scorer.probe(self.model)  # how long an evaluation takes, before the first one
        self.log.event(
            self.progress.step,
            "started",
            at=round(time.time(), 3),  # wall clock: setup is done
            device=str(self.device),
            precision=self.run.precision,
            tf32=self.cfg.tf32,
            exact_resume=self.inexact_resume is None,
        )
        if self.run.resuming and self.inexact_resume is not None:
            self.log.say(
                f"resumed on {self.device}: the continuation is close, not bit for bit ({self.inexact_resume})"
            )
        if self.run.init is not None and not self.run.resuming:
            self.log.say(fine_tune_message(self.run.init, self.run.corpus.meta))

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = self.log.bar = None

    def _budget_spent(self) -> bool:
        return self.budget.spent(self.progress.step, self.progress.elapsed)

    def _schedule_over(self) -> bool:
        """An extended run whose decay has reached a floor of 0: more steps would change nothing, so it
        stops ("stopped: schedule"). A run's own budget always ends before its decay does."""
        p = self.progress
        if schedule_lr(self.cfg, p.step, p.elapsed, self.run.decay_steps, self.run.decay_time) == 0.0:
            self.stop_reason = self.stop_reason or "schedule"
            return True
        return False

    def _should_stop(self) -> bool:
        stop = self._budget_spent() or self.stop_reason is not None or self._schedule_over()
        self.interrupted = self.stop_request.requested
        if self.run.world_size > 1:  # rank 0 decides, so every process stops at the same step
            stop, self.interrupted = distributed.broadcast_flags([stop, self.interrupted], self.device)
        return stop or self.interrupted

    def train_step(self, step: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Forward and backward on batch ``step``, clipped; returns (loss, pre-clip grad norm, lr).

        The optimizer step itself is taken by the caller, once the values are known to be finite.
        """
        cfg = self.cfg
        x, y, starts = self.batches.get(step)  # (B, T) each
        if starts:
            self.carried = None  # zero state: streams restart
        lr = schedule_lr(cfg, step, self.progress.elapsed, self.run.decay_steps, self.run.decay_time)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        carried = self.carried
        if carried is not None and self.state_dtype != torch.float32:  # the dtype the RNN kernel works in
            carried = detach_state(carried, self.state_dtype)
        with self.autocast():
            loss, state = self.ddp_model(x, carried, targets=y)
        # Detach: the next batch starts from this state, but gradients stop here (truncated BPTT).
        # It is kept (and saved) in float32 whatever the autocast dtype, so that a run can resume at
        # another precision; under bf16/fp16 it is cast back when fed in (exactly, so training is the
        # same). Random windows always start from zeros, so there is nothing to carry.
        self.carried = detach_state(state, torch.float32) if cfg.layout == "stateful" else None
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
        return loss.detach(), grad_norm, lr

    def _step(self) -> None:
        """One training step, skipped when anything is non-finite (guard.py); advances the step and the clock."""
        t0 = time.perf_counter()
        loss, grad_norm, lr = self.train_step(self.progress.step)
        loss, ok = self.guard.step(loss, grad_norm, self.progress)
        if ok is False:
            self.carried = None  # a skipped step's state may hold the non-finite values: start again from zeros
        elif isinstance(ok, torch.Tensor) and self.carried is not None:
            self.carried = zero_where_not(ok, self.carried)
        self.progress.step += 1
        now = time.perf_counter()
        self.timing.step = now - t0
        self.progress.elapsed = self.budget.elapsed(now)
        self.meter.add(loss, ok, grad_norm, lr, self.batches.chars_per_batch * self.run.world_size, now - t0)
        if self.bar is not None:
            self.bar.update(1)

    def _diverged(self, streak: int, step: int) -> ChargenError:
        return self._divergence(f"{streak} steps in a row with a non-finite loss or gradient by step {step}")

    def _divergence(self, what: str) -> ChargenError:
        """Training diverged (``what`` says how): where the last checkpoint is, or that there is none."""
        if self.run.claim is None:
            kept = (
                f"the last good checkpoint is in {self.run.dir}/last; lower --lr or --clip and resume, or start again"
            )
        else:
            kept = "it had no checkpoint yet, so nothing is kept; lower --lr or --clip and start again"
        return ChargenError(f"training diverged: {what}; {kept}")

    def _log_and_evaluate(self) -> None:
        """Write a metrics line every --log-every steps, and evaluate every --eval-every, and at the end."""
        step, cfg = self.progress.step, self.cfg
        at_end = self._budget_spent()
        due = step % cfg.eval_every == 0 or at_end
        if step % cfg.log_every == 0 or at_end:
            self.guard.check(self.progress)
            row = self.meter.line(step, self.progress.elapsed)
        elif due:
            row = dict(step=step, elapsed=round(self.progress.elapsed, 3))
        else:
            return
        if due and not self._evaluate(row, final=at_end) and "loss" not in row:
            return  # skipped, and no log line due either
        self.log.write(row)
        if self.bar is not None:
            self.bar.show(row, self.cfg.max_time, self.progress.elapsed)

    def _finish(self) -> TrainResult:
        """The final state of the run is always evaluated and checkpointed."""
        p = self.progress
        stopped = p.stopped = self.stop_reason or "budget"
        if p.step and p.last_eval_step != p.step:
            row = dict(step=p.step, elapsed=round(p.elapsed, 3))
            self._evaluate(row, final=True)
            self.log.write(row)
        p.elapsed = self.budget.elapsed()
        self._checkpoint()
        self.log.event(p.step, "stopped", reason=stopped)
        self.log.close()
        best = p.best_val_loss
        return TrainResult(
            run_dir=str(self.run.dir),
            steps=p.step,
            best_val_loss=best,
            best_val_bpc=None if best is None else best / math.log(2),
            stopped=stopped,
            chars_per_sec=self.meter.chars_per_sec,
            elapsed=self.budget.elapsed(),
            main=self.run.is_main,
            device=str(self.device),
            precision=self.run.precision,
        )

    def _on_interrupt(self) -> None:
        """Stopped by Ctrl-C between two steps (every process at the same one): checkpoint exactly.
        Further Ctrl-Cs are ignored while the checkpoint is written, so it is never cut short."""
        with ctrl_c_ignored():
            self._checkpoint()
        self.log.event(self.progress.step, "stopped", reason="interrupted")
        self.log.close()
        self.log.say(
            f"interrupted at step {self.progress.step}; checkpoint saved. Resume with: {self.run.resume_hint()}"
        )

    # -- evaluation and checkpoints --------------------------------------------

    def _evaluate(self, row: dict, final: bool = False) -> bool:
        """Evaluate into ``row`` (see evaluation.py); asks to stop when patience runs out. Whether it ran.

        Only rank 0 evaluates; the others carry on to the next step's broadcast.
        """
        p = self.progress
        p.last_eval_step = p.step
        if not self.run.is_main:
            return False
        ran = self.evaluation(self.model, p, self.run.dir, row, final)
        if ran and self.cfg.patience is not None and p.evals_since_best >= self.cfg.patience:
            self.stop_reason = "patience"
        return ran

    def _checkpoint(self) -> None:
        """Write last/. With several processes every rank must call it: states and RNGs are gathered."""
        self.guard.check(self.progress)  # never a checkpoint of a run that has diverged
        took = checkpointing.write_last(self.run, self.model, self.optimizer, self.scaler, self.progress, self.carried)
        if took is not None:
            self.timing.checkpoint = took
            self.log.path = self.run.dir / "metrics.jsonl"  # the first checkpoint may have moved the run

    def _restore(self) -> None:
        rows = getattr(self.batches, "rows", slice(None))  # this rank's streams
        self.progress, self.carried = checkpointing.restore(self.run, self.model, self.optimizer, self.scaler, rows)
        self.log.truncate(self.progress.step)
