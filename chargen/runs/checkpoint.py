"""Weights and the resume checkpoint ``last/``: written atomically, loaded safely (no pickle anywhere).

::

    RUN/last/
      model.safetensors      weights
      optimizer.safetensors  AdamW moments and step counts
      state.safetensors      carried hidden state (full (L, B, H), every process's streams), RNG states
      trainer.json           step, elapsed time, best loss, patience and non-finite counts, optimizer
                             hyperparameters, grad-scaler state, process count

``last/`` is written as a whole new folder and swapped in, so a crash at any
moment leaves the previous checkpoint readable (``last.old/`` between the two
renames). The stream position is the step: batches are a pure function of it.

Everything :func:`save_last` writes and :func:`load_last` returns, beyond the
model and optimizer themselves, is one :class:`ResumeState`.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from ..errors import ChargenError, StorageError, write_failure
from ..files import atomic_write, fsync_dir, temporary_dir, write_json
from .folder import last_dir, read_json
from .sealed import check_companions, check_sealed, companion_checksums, seal_safetensors

if TYPE_CHECKING:
    from ..config import ModelConfig
    from ..model.network import CharRNN


@dataclass
class ResumeState:
    """Where a run stands, beyond its weights and optimizer: what a resume restores."""

    step: int = 0
    elapsed: float = 0.0  # wall-clock seconds, carried across resumes
    best_val_loss: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    bad_streak: int = 0  # non-finite steps in a row
    last_eval_step: int | None = None
    world_size: int = 1
    stopped: str | None = None  # why a finished run stopped (budget, patience); None while running
    rng: dict[str, torch.Tensor] = field(default_factory=dict)  # "rng_cpu", "rng_cuda" (".R" per rank)
    carried: dict[str, torch.Tensor] = field(default_factory=dict)  # "h" (and "c"): (L, B, H), all streams


# --------------------------------------------------------------------------- tensors and weights


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Write safetensors atomically; tensors go to CPU and are made contiguous."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_write(path) as tmp, _safetensors_writing(path):
        save_file(cpu, str(tmp), metadata=_metadata(metadata))
        seal_safetensors(tmp)


@contextmanager
def _safetensors_writing(path: Path) -> Iterator[None]:
    """safetensors reports a failed write (``File too large (os error 27)``) as a SafetensorError: a
    StorageError naming ``path``, as an OSError would be."""
    try:
        yield
    except SafetensorError as e:
        cause = str(e).splitlines()[0]
        raise StorageError(path, cause.split("I/O error: ", 1)[-1]) from None


def read_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise ChargenError(f"{path} is missing; the run folder is incomplete")
    check_sealed(path)
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _unreadable(path, e) from None


def _metadata(metadata: dict | None) -> dict[str, str]:
    return {k: str(v) for k, v in (metadata or {}).items()}


def _unreadable(path: str | os.PathLike[str], e: Exception) -> ChargenError:
    return ChargenError(
        f"{path} is not a readable safetensors file ({str(e).splitlines()[0]}); the run folder is corrupt"
    )


def save_weights(model: torch.nn.Module, path: Path, metadata: dict | None = None) -> None:
    """Write a model's weights atomically. Tied weights are stored once (safetensors drops the
    duplicate), and non-finite weights are never written over a good file."""
    bad = [k for k, v in model.state_dict().items() if not torch.isfinite(v).all()]
    if bad:
        raise ChargenError(
            f"weights became non-finite ({', '.join(bad[:3])}); nothing was saved over the "
            f"last good checkpoint in {Path(path).parent}: lower --lr and resume"
        )
    with atomic_write(path) as tmp, _safetensors_writing(path):
        save_model(model, str(tmp), metadata=_metadata(metadata))
        seal_safetensors(tmp)


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load weights saved by :func:`save_weights`, checking names, shapes and finiteness."""
    if not Path(path).is_file():
        raise ChargenError(f"{path} is missing; the run folder is incomplete")
    if hasattr(model, "config"):  # names, shapes and dtypes from the header first, as the NumPy backend reads it
        from .folder import check_weights_header

        check_weights_header(Path(path), cast("ModelConfig", model.config))  # a CharRNN's: nn.Module types no config
    try:
        load_model(model, str(path), strict=True)
    except (SafetensorError, OSError, ValueError) as e:
        raise _unreadable(path, e) from None
    except RuntimeError as e:  # names or shapes that do not fit the model
        detail = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
        raise ChargenError(
            f"{path} does not fit the model in config.json ({detail}); the run folder is corrupt"
        ) from None
    for k, v in model.state_dict().items():
        if not torch.isfinite(v).all():
            raise ChargenError(f"{path} holds non-finite values in {k}; the run folder is corrupt")
    rank = model.state_dict().get("head.rank")  # the adaptive softmax's order: a permutation of the ids
    if rank is not None and not torch.equal(rank.sort().values, torch.arange(rank.numel(), device=rank.device)):
        raise ChargenError(
            f"{path} holds a head.rank that is not an order of the characters; the run folder is corrupt"
        )


# --------------------------------------------------------------------------- optimizer state


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """AdamW's state as flat named tensors plus its param groups as JSON-able dicts."""
    sd = optimizer.state_dict()
    tensors = {}
    for index, st in sd["state"].items():
        for key, value in st.items():
            tensors[f"{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    fixed = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    try:
        optimizer.load_state_dict({"state": state, "param_groups": fixed})
    except (ValueError, KeyError, RuntimeError) as e:
        raise ChargenError(
            f"the optimizer state in last/ does not fit the model ({e}); the run folder is corrupt"
        ) from None


# --------------------------------------------------------------------------- last/

_COUNTERS = (
    "step",
    "elapsed",
    "best_val_loss",
    "best_step",
    "evals_since_best",
    "bad_streak",
    "last_eval_step",
    "world_size",
    "stopped",
)


LAST_COMPANIONS = {"trainer_sha256": "trainer.json"}  # what last/model.safetensors vouches for in last/


def save_last(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    rs: ResumeState,
) -> None:
    """Write ``last/`` as a new folder and swap it in."""
    run_dir = Path(run_dir)
    opt_tensors, groups = optimizer_tensors(optimizer)
    trainer = {k: getattr(rs, k) for k in _COUNTERS}
    trainer.update(
        optimizer_groups=groups, scaler=scaler.state_dict() if scaler.is_enabled() else None, has_state=bool(rs.carried)
    )
    had = (run_dir / "last").is_dir()
    try:
        _write_last(run_dir, model, rs.step, opt_tensors, rs, trainer)
    except (StorageError, OSError) as e:
        cause = write_failure(e)
        advice = (
            f"the previous checkpoint there is intact: free some space, then chargen train --out "
            f"{shlex.quote(str(run_dir))} --resume"
            if had
            else "no checkpoint was written yet: free some space and start the run again"
        )
        raise StorageError(run_dir / "last", cause, advice) from None


def sweep_staging(run_dir: Path) -> None:
    """Remove what a writer killed mid-write leaves in a run folder: a ``.last.*`` staging folder, a
    ``.NAME.*.tmp`` file. Only under the run's lock: no other process is writing them."""
    for p in Path(run_dir).iterdir():
        if p.name.startswith(".last.") and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(".") and p.name.endswith((".tmp", ".sealed")) and p.is_file():
            p.unlink(missing_ok=True)


def _write_last(
    run_dir: Path,
    model: torch.nn.Module,
    step: int,
    opt_tensors: dict[str, torch.Tensor],
    rs: ResumeState,
    trainer: dict,
) -> None:
    with temporary_dir(run_dir, prefix=".last.") as tmp:
        write_json(tmp / "trainer.json", trainer)
        write_tensors(tmp / "optimizer.safetensors", opt_tensors)
        write_tensors(tmp / "state.safetensors", {**rs.rng, **{f"state.{k}": v for k, v in rs.carried.items()}})
        vouched = {**companion_checksums(run_dir), **companion_checksums(tmp, LAST_COMPANIONS)}
        save_weights(model, tmp / "model.safetensors", {"step": step, **vouched})
        last, old = run_dir / "last", run_dir / "last.old"
        if last.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.rename(last, old)
        os.rename(tmp, last)
        fsync_dir(run_dir)  # the swap survives a power cut: never an empty last/ with the old one gone
        shutil.rmtree(old, ignore_errors=True)


def load_last(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    world_size: int,
) -> ResumeState:
    """Load ``last/`` into the model, optimizer and scaler; return the rest as a ResumeState.

    The carried state and RNG tensors come back on the CPU, whole (every
    process's streams): the trainer takes its own rows.
    """
    d = last_dir(run_dir)
    check_companions(d / "model.safetensors", d, LAST_COMPANIONS)
    load_weights(model, d / "model.safetensors")
    info = read_json(d / "trainer.json")
    saved_world = info.get("world_size", 1)
    if saved_world != world_size:
        raise ChargenError(
            f"{run_dir} was checkpointed by {saved_world} process(es); resume it with "
            f"the same number (this is {world_size})"
        )
    try:
        load_optimizer(optimizer, read_tensors(d / "optimizer.safetensors", device=device), info["optimizer_groups"])
        extra = read_tensors(d / "state.safetensors")
        if info.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(info["scaler"])
        rs = ResumeState(
            step=int(info["step"]),
            elapsed=float(info["elapsed"]),
            best_val_loss=info["best_val_loss"],
            best_step=info["best_step"],
            evals_since_best=int(info["evals_since_best"]),
            bad_streak=int(info["bad_streak"]),
            last_eval_step=info.get("last_eval_step"),
            world_size=saved_world,
            stopped=info.get("stopped"),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ChargenError(
            f"{d} is incomplete or corrupt ({type(e).__name__}: {e}); start a new run with --overwrite"
        ) from None
    rs.rng = {k: v for k, v in extra.items() if k.startswith("rng_")}
    if info.get("has_state"):
        rs.carried = {k.split(".", 1)[1]: v for k, v in extra.items() if k.startswith("state.")}
    return rs


def rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """The RNG states a resume needs: the CPU's (dropout there, and data order) and the accelerator's."""
    rng = {"rng_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        rng["rng_cuda"] = torch.cuda.get_rng_state(device)
    return rng


def restore_rng(rng: dict[str, torch.Tensor], device: torch.device, suffix: str, run_dir: Path) -> None:
    """Set the RNGs from :func:`rng_states` (``suffix`` ".R" picks rank R's of a multi-process run)."""
    try:
        torch.set_rng_state(rng["rng_cpu" + suffix])
    except KeyError:
        raise ChargenError(
            f"{run_dir}/last/state.safetensors has no RNG state; the run folder is corrupt: "
            "start a new run with --overwrite"
        ) from None
    if "rng_cuda" + suffix in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["rng_cuda" + suffix], device)


# --------------------------------------------------------------------------- fine-tuning

NEW_CHAR_PROB = 1e-4  # what a character the base run never saw starts with, against its own characters


@torch.no_grad()
def init_from_base(model: CharRNN, path: Path, base_vocab: int) -> None:
    """Start ``model`` from a base run's weights (``path``, a model of ``base_vocab`` characters): every
    tensor is copied; the rows of characters the base lacks (ids ``base_vocab`` and up) are new. A new
    character's embedding is the mean of the base's, so as input it reads as a typical character.

    Full softmax: its output row is zero and its bias is the base's bias mass times NEW_CHAR_PROB, so the
    base's characters keep nearly all their probability (the first loss on them is the base's) while the
    new ones can be learned: the gradient reaches their output rows at once.

    Adaptive softmax: new characters join the last cluster, after its own in the order; their rows there
    are the mean of its rows. The cluster has no bias, but exp is convex, so a mean row's score is at most
    the mean of the others': k new characters take at most k/(n+k) of an n-character cluster's mass, and
    only the rarest characters (the last cluster's) lose any probability."""
    from dataclasses import replace

    from ..model.network import CharRNN

    c = model.config
    base = CharRNN(replace(c, vocab_size=base_vocab)).to(next(model.parameters()).device)
    load_weights(base, path)
    ours, theirs = model.state_dict(), base.state_dict()
    last_tail = None
    if c.adaptive:
        assert c.cutoffs is not None  # an adaptive config has its cutoffs: CharRNN(c) needed them above
        last_tail = f"head.tail.{len(c.cutoffs) - 1}.1.weight"
    for name, value in theirs.items():
        if name == "head.weight" and c.tie_weights:
            continue  # the embedding's matrix: done as the embedding (new rows read as typical characters)
        target = ours[name]
        if target.shape == value.shape:
            target.copy_(value)
            continue
        rows = value.shape[0]  # the vocabulary's rows: embedding, output rows and bias, order
        target[:rows].copy_(value)
        if name in ("embedding.weight", last_tail):
            target[rows:] = value.mean(dim=0)
        elif name == "head.weight":
            target[rows:] = 0.0
        elif name == "head.bias":
            target[rows:] = torch.logsumexp(value, dim=0) + math.log(NEW_CHAR_PROB)
        elif name == "head.rank":  # after every base character in the order: the last cluster
            target[rows:] = torch.arange(rows, target.numel(), device=target.device)
        else:
            raise AssertionError(f"{name} grew from {tuple(value.shape)} to {tuple(target.shape)}")
