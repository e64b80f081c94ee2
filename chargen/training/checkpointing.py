"""The trainer's checkpoints: ``last/`` written and read back for an exact resume, and the best weights.

The on-disk format is checkpoint.py's. What this adds is the trainer's side:
with several processes every rank's RNG and share of the carried state are
gathered to rank 0, which writes; the first checkpoint makes a new run real
(:meth:`Run.settle`); and on resume each rank takes back its own streams' rows
of the carried state.
"""

from __future__ import annotations

import dataclasses
import shlex
import time
from pathlib import Path

import torch

from ..errors import StorageError
from ..model.network import RNNState, state_from_tensors, state_tensors
from ..runs.checkpoint import ResumeState, load_last, restore_rng, rng_states, save_last, save_weights
from ..runs.sealed import companion_checksums
from . import distributed
from .launch import Run


def inexact_resume(device_type: str, num_layers: int, dropout: float, clock_schedule: bool) -> str | None:
    """Why a run resumed from ``last/`` would not continue bit for bit as the run that never stopped, or
    None where it does: on the CPU, with a schedule of steps (not of ``--max-time``'s clock)."""
    if device_type == "cuda":
        if num_layers > 1 and dropout > 0:
            return "cuDNN's dropout between the layers keeps a random state of its own that no checkpoint holds"
        return "CUDA kernels (the embedding's gradient among them) add in an order that varies from run to run"
    if device_type != "cpu":
        return f"{device_type} kernels do not promise the same bits from run to run"
    if clock_schedule:
        return "the learning rate follows the clock: --max-time without --decay-steps"
    return None


def save_best(model: torch.nn.Module, run_dir: Path, progress: ResumeState) -> None:
    """Write the best weights so far, ``model.safetensors``, with the step and validation loss they had."""
    path = run_dir / "model.safetensors"
    had = path.is_file()
    try:
        save_weights(
            model, path, {"step": progress.step, "val_loss": progress.best_val_loss, **companion_checksums(run_dir)}
        )
    except StorageError as e:
        advice = (
            "the previous best weights and checkpoint are intact: free some space, then chargen train --out "
            f"{shlex.quote(str(run_dir))} --resume"
            if had
            else "no checkpoint was written yet: free some space and start the run again"
        )
        raise StorageError(path, e.cause, advice) from None


def write_last(
    run: Run,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    progress: ResumeState,
    carried: RNNState | None,
) -> float | None:
    """Write ``last/`` with the state the last batch ended with (``carried``, or None), then settle the run.
    With several processes every rank must call it: states and RNGs are gathered. The seconds the writing
    took on rank 0; None on the others."""
    tensors = state_tensors(carried) if carried is not None else {}
    tensors, rng = distributed.gather_checkpoint(tensors, rng_states(run.device), run.world_size)
    if not run.is_main:
        return None
    began = time.perf_counter()
    if not (run.dir / "model.safetensors").is_file():
        save_best(model, run.dir, progress)  # no evaluation yet: the run's weights must still load
    save_last(run.dir, model, optimizer, scaler, dataclasses.replace(progress, rng=rng, carried=tensors))
    took = time.perf_counter() - began
    run.settle()
    return took


def restore(
    run: Run, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, rows: slice
) -> tuple[ResumeState, RNNState | None]:
    """Load ``last/`` into the model, optimizer, scaler and RNGs; the run's progress, and the carried state
    of this rank's streams (``rows`` of the batch; None when the run carried none)."""
    progress = load_last(run.dir, model, optimizer, scaler, run.device, run.world_size)
    restore_rng(progress.rng, run.device, f".{run.rank}" if run.world_size > 1 else "", run.dir)
    carried: RNNState | None = None
    if progress.carried:
        mine = {k: v[:, rows].contiguous().to(run.device) for k, v in progress.carried.items()}
        carried = state_from_tensors(mine, run.model_config.cell)
    progress.rng, progress.carried = {}, {}
    if progress.stopped == "patience":  # extended with a new budget: patience starts over
        progress.evals_since_best = 0
    progress.stopped = None
    return progress, carried
