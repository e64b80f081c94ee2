"""Training: stateful truncated BPTT with clipping, evaluation, checkpoints and exact resume.

Usage (the CLI is a thin layer over this)::

    from chargen.train import train
    result = train("tinyshakespeare", out="runs/shakespeare", preset="cpu", max_time=300)

One step: take batch k of the B streams (see batches.py), start from the
state batch k-1 ended with, detached so gradients stop at T steps (reset to
zeros where the streams restart), run forward and backward, clip the global
gradient norm, and take an AdamW step at the scheduled learning rate. A
non-finite loss or gradient skips the step; several in a row stop the run.

Everything a resume needs is in ``last/`` (see checkpoint.py). Batches are a
pure function of the step, the CPU RNG (dropout) is saved, and previews draw
from their own counter-based seed, so on CPU a run resumed at step N is bit for bit the run
that never stopped.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .batches import RandomWindows, StatefulStreams
from .decode import FastStep, decode_ids
from .errors import ChargenError
from .model import CharRNN, detach_state
from . import distributed
from .trainconfig import TrainConfig, resolve_precision
from .runs import RunWriter, open_run


@dataclass
class TrainResult:
    run_dir: str
    steps: int
    best_val_loss: float | None
    best_val_bpc: float | None
    stopped: str          # "budget", "patience", "interrupted"
    chars_per_sec: float
    elapsed: float
    main: bool = True     # False on the other processes of a multi-process run


def schedule_lr(cfg: TrainConfig, step: int, elapsed: float, decay_steps: int | None,
                decay_time: float | None) -> float:
    """Linear warmup, then constant or cosine down to ``min_lr_ratio * lr``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = 0.0
    if decay_steps:
        progress = (step - cfg.warmup_steps) / max(1, decay_steps - cfg.warmup_steps)
    if decay_time:
        progress = max(progress, elapsed / decay_time)
    progress = min(max(progress, 0.0), 1.0)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model: CharRNN, inputs: np.ndarray, targets: np.ndarray, *, batch_size: int = 32,
             chunk: int = 256, device: torch.device, autocast=None) -> tuple[float, int]:
    """Exact summed loss (nats) over every target, reading B contiguous streams with carried state.

    The sequence is cut into ``batch_size`` streams of equal length (the last
    padded with ignored targets), each read start to end in chunks of
    ``chunk`` steps with its state carried, so every target is scored once.
    """
    n = len(targets)
    if n == 0:
        return 0.0, 0
    B = max(1, min(batch_size, n // max(1, chunk) or 1))
    S = -(-n // B)
    x = np.zeros(B * S, dtype=np.int64)
    y = np.full(B * S, -100, dtype=np.int64)           # -100: ignored by cross_entropy
    x[:n], y[:n] = inputs, targets
    x = torch.from_numpy(x).view(B, S).to(device)
    y = torch.from_numpy(y).view(B, S).to(device)
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    state = None
    for lo in range(0, S, chunk):
        with autocast():
            logits, state = model(x[:, lo:lo + chunk], state)      # (B, t, V)
        total += F.cross_entropy(logits.float().flatten(0, 1), y[:, lo:lo + chunk].flatten(),
                                 ignore_index=-100, reduction="sum").double()
    model.train(was_training)
    return float(total), n


@torch.no_grad()
def preview(model: CharRNN, vocab, length: int, seed: int, temperature: float = 0.8) -> str:
    """A short sample to show progress, drawn from its own seed: the training RNG is never touched."""
    was_training = model.training
    model.eval()
    device = model.head.weight.device
    start = vocab.chars.index("\n") if "\n" in vocab.chars else 0
    logits, state = model(torch.tensor([[start]], device=device))
    step = FastStep(model)
    out = list(decode_ids(step, logits[:, -1], step.to_fast(state), length,
                          np.array([seed], dtype=np.uint64), temperature, banned=vocab.unk_id))
    model.train(was_training)
    return vocab.decode(torch.cat(out)) if out else ""


def train(source=None, *, out, resume: bool = False, overwrite: bool = False,
          progress: bool | None = None, corpora_dirs=(), cache_dir=None, config_file=None,
          preset: str | None = None, **options) -> TrainResult:
    """Train a CharRNN on ``source`` into the run folder ``out``.

    ``options`` are fields of :class:`TrainConfig`, :class:`ModelConfig`
    (``cell``, ``num_layers``, ``hidden_size``, ``dropout``, ...) and of the
    prepare options (``val_fraction``, ``normalize``, ...); ``preset`` and
    ``config_file`` (TOML) supply defaults that ``options`` override.
    """
    run = open_run(source, out=out, resume=resume, overwrite=overwrite, corpora_dirs=corpora_dirs,
                   cache_dir=cache_dir, config_file=config_file, preset=preset, options=options)
    if progress is None:
        progress = sys.stderr.isatty()
    result = Trainer(run, progress=progress).fit()
    # Every process reaches the end before any leaves the group: tearing it down while rank 0
    # still writes the last checkpoint aborts the others ("terminate called ..."). On an error
    # the group is left to the exiting process, so each rank still prints its one line.
    distributed.barrier()
    distributed.shutdown()
    return result


class Trainer:
    """The training loop over an opened run (see runs.open_run)."""

    def __init__(self, run, progress: bool = False):
        self.run = run
        cfg: TrainConfig = run.train_config
        self.cfg = cfg
        self.device = run.device
        self.precision = resolve_precision(cfg.precision, self.device)
        self.progress = progress
        corpus = run.corpus
        self.vocab = corpus.vocab
        rank, world = run.rank, run.world_size
        layout = StatefulStreams if cfg.layout == "stateful" else RandomWindows
        kwargs = dict(rank=rank, world_size=world, device=self.device)
        if cfg.layout == "random":
            kwargs["seed"] = cfg.seed
        self.batches = layout(corpus.train, cfg.batch_size, cfg.bptt, **kwargs)
        train_ids, val_ids = corpus.train, corpus.val
        # Validation scores every validation character, the first one given the last training one.
        self.val_inputs = np.concatenate([train_ids[-1:], val_ids[:-1]]).astype(np.int64) if len(val_ids) else None
        self.val_targets = np.asarray(val_ids, dtype=np.int64) if len(val_ids) else None

        torch.manual_seed(cfg.seed)
        self.model = CharRNN(run.model_config).to(self.device)
        self.model.train()
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=(0.9, 0.99),
                                           weight_decay=cfg.weight_decay, **({"fused": True} if fused else {}))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.ddp_model = run.wrap_model(self.model)
        self.state = None
        self.step = 0
        self.elapsed = 0.0
        self.best_val = None
        self.best_step = None
        self.evals_since_best = 0
        self.bad_streak = 0
        self.stop_reason = None  # set by evaluation (patience) on rank 0
        self.writer = RunWriter(run, self)
        if run.resuming:
            self.writer.restore()

    # -- pieces ------------------------------------------------------------

    def autocast(self):
        if self.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            return torch.autocast(self.device.type, dtype=dtype)
        return torch.autocast(self.device.type, enabled=False)

    def total_steps(self) -> int | None:
        cfg = self.cfg
        limits = []
        if cfg.max_steps is not None:
            limits.append(cfg.max_steps)
        if cfg.epochs is not None:
            limits.append(math.ceil(cfg.epochs * len(self.batches)))
        return min(limits) if limits else None

    def validate(self) -> tuple[float, float] | None:
        if self.val_targets is None:
            return None
        total, n = evaluate(self.model, self.val_inputs, self.val_targets, batch_size=self.cfg.eval_batch_size,
                            device=self.device, autocast=self.autocast)
        loss = total / n
        return loss, loss / math.log(2)

    def train_step(self, step: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One optimizer step; returns (loss, pre-clip grad norm, lr) as tensors/float."""
        cfg = self.cfg
        x, y, starts = self.batches.get(step)                             # (B, T) each
        if starts or self.state is None:
            self.state = None                                           # zero state: streams restart
        lr = schedule_lr(cfg, step, self.elapsed, self.run.decay_steps, self.run.decay_time)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self.autocast():
            logits, state = self.ddp_model(x, self.state)              # (B, T, V)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        # Detach: the next batch starts from this state, but gradients stop here (truncated BPTT).
        # Random windows always start from zeros, so there is nothing to carry.
        self.state = detach_state(state) if cfg.layout == "stateful" else None
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
        return loss.detach(), grad_norm, lr

    # -- the loop ----------------------------------------------------------

    def fit(self) -> TrainResult:
        cfg, w = self.cfg, self.writer
        total = self.total_steps()
        bar = None
        if self.progress and self.run.is_main:
            from tqdm import tqdm
            bar = tqdm(total=total, initial=self.step, unit="step", dynamic_ncols=True, file=sys.stderr)
        w.begin()
        stopped = "budget"
        loss_sum = torch.zeros((), device=self.device)
        logged_steps, log_chars, log_time = 0, 0, 0.0
        last_norm, last_lr = float("nan"), 0.0
        chars_per_step = self.batches.chars_per_batch * self.run.world_size
        run_chars, run_time = 0, 0.0
        # The time budget is wall-clock (evaluation and checkpoints included), carried across resumes.
        wall_start = time.perf_counter() - self.elapsed
        world = self.run.world_size
        try:
            while True:
                stop = ((total is not None and self.step >= total) or
                        (cfg.max_time is not None and self.elapsed >= cfg.max_time) or
                        self.stop_reason is not None)
                if world > 1:  # rank 0 decides, so every process stops at the same step
                    stop = distributed.broadcast_flag(stop, self.device)
                if stop:
                    break
                t0 = time.perf_counter()
                loss, grad_norm, lr = self.train_step(self.step)
                # One host sync per step: the finite check decides whether to step.
                if world > 1:
                    loss, any_bad = distributed.mean_and_any_bad(loss, world)
                    finite = not any_bad and bool(torch.isfinite(grad_norm))
                else:
                    finite = bool(torch.isfinite(loss) & torch.isfinite(grad_norm))
                if finite:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.bad_streak = 0
                    loss_sum += loss
                    logged_steps += 1
                else:
                    self.optimizer.zero_grad(set_to_none=True)
                    self.state = None
                    self.bad_streak += 1
                    w.event("nonfinite", loss=float(loss), grad_norm=float(grad_norm))
                    if self.scaler.is_enabled():
                        self.scaler.update(self.scaler.get_scale() / 2)
                    if self.bad_streak >= cfg.max_bad_steps:
                        w.event("stopped", reason="nonfinite")
                        raise ChargenError(
                            f"training diverged: {self.bad_streak} steps in a row with a non-finite loss or "
                            f"gradient at step {self.step}; the last good checkpoint is in {self.run.dir}/last; "
                            "lower --lr or --clip and resume or start again")
                self.step += 1
                now = time.perf_counter()
                dt = now - t0
                self.elapsed = now - wall_start
                log_time += dt
                log_chars += chars_per_step
                run_chars += chars_per_step
                run_time += dt
                last_lr = lr
                if finite:
                    last_norm = grad_norm
                if bar is not None:
                    bar.update(1)
                at_end = (total is not None and self.step >= total) or \
                         (cfg.max_time is not None and self.elapsed >= cfg.max_time)
                evaluate = self.step % cfg.eval_every == 0 or at_end
                if self.step % cfg.log_every == 0 or at_end:
                    train_loss = float(loss_sum) / max(1, logged_steps)
                    row = dict(step=self.step, loss=round(train_loss, 5), lr=last_lr,
                               grad_norm=round(float(last_norm), 5),
                               chars_per_sec=round(log_chars / max(log_time, 1e-9), 1),
                               elapsed=round(self.elapsed, 3))
                    loss_sum.zero_()
                    logged_steps, log_chars, log_time = 0, 0, 0.0
                elif evaluate:
                    row = dict(step=self.step, elapsed=round(self.elapsed, 3))
                else:
                    row = None
                if evaluate:
                    self.evaluate_and_save(row, bar)
                if row is not None:
                    w.metrics(row)
                    if bar is not None:
                        bar.set_postfix_str(self._postfix(row, total))
                if self.step % cfg.checkpoint_every == 0:
                    w.checkpoint()
                self.elapsed = time.perf_counter() - wall_start
        except KeyboardInterrupt:
            stopped = "interrupted"
            if bar is not None:
                bar.close()
                bar = None
            if world == 1:
                w.checkpoint()
                w.event("stopped", reason="interrupted")
                w.say(f"interrupted at step {self.step}; checkpoint saved. Resume with: {self.run.resume_hint()}")
            else:  # the other processes may be anywhere: gathering a checkpoint now could hang
                w.say(f"interrupted at step {self.step}; the last periodic checkpoint stands. "
                      f"Resume with: {self.run.resume_hint()}")
            raise
        finally:
            if bar is not None:
                bar.close()
        if self.stop_reason is not None:
            stopped = self.stop_reason
        # The final state of the run is always checkpointed and evaluated.
        if self.step and (not w.last_eval_step or w.last_eval_step != self.step):
            row = dict(step=self.step, elapsed=round(self.elapsed, 3))
            self.evaluate_and_save(row, None)
            w.metrics(row)
        w.checkpoint()
        w.end(stopped)
        return TrainResult(run_dir=str(self.run.dir), steps=self.step, best_val_loss=self.best_val,
                           best_val_bpc=None if self.best_val is None else self.best_val / math.log(2),
                           stopped=stopped, chars_per_sec=run_chars / max(run_time, 1e-9),
                           elapsed=self.elapsed, main=self.run.is_main)

    def evaluate_and_save(self, row: dict, bar) -> None:
        """Validate, keep the best weights, print a preview; asks to stop when patience runs out.

        Only rank 0 evaluates; the others carry on to the next step's broadcast.
        """
        w = self.writer
        w.last_eval_step = self.step
        if not self.run.is_main:
            return
        result = self.validate()
        if result is None:
            w.save_best()  # no validation split: the latest weights are the best we know
            return
        loss, bpc = result
        row.update(val_loss=round(loss, 5), val_bpc=round(bpc, 5))
        if self.best_val is None or loss < self.best_val:
            self.best_val, self.best_step, self.evals_since_best = loss, self.step, 0
            w.save_best()
        else:
            self.evals_since_best += 1
        message = f"step {self.step}: val {loss:.4f} nats/char ({bpc:.4f} bpc)"
        if self.run.is_main and self.cfg.preview_chars:
            text = preview(self.model, self.vocab, self.cfg.preview_chars, seed=self.cfg.seed + self.step)
            message += f"\n--- sample ---\n{text}\n--------------"
        w.say(message, bar)
        if self.cfg.patience is not None and self.evals_since_best >= self.cfg.patience:
            self.stop_reason = "patience"

    def _postfix(self, row: dict, total: int | None) -> str:
        parts = []
        if "loss" in row:
            parts.append(f"loss {row['loss']:.3f}")
        if "val_loss" in row:
            parts.append(f"val {row['val_loss']:.3f}")
        if "chars_per_sec" in row:
            parts.append(f"{row['chars_per_sec'] / 1000:.1f}k chars/s")
        left = []
        if self.cfg.max_time is not None:
            left.append(self.cfg.max_time - self.elapsed)
        if total is not None and self.step:
            left.append((total - self.step) * self.elapsed / self.step)
        if left:
            s = max(0, int(min(left)))
            parts.append(f"left {s // 60}:{s % 60:02d}")
        return ", ".join(parts)
