"""Opening a run folder for training: new, overwritten or resumed.

``open_run`` layers the options (preset < TOML file < keyword options),
checks them, takes the run folder's lock, prepares the corpus, and only then
writes ``config.json`` and ``tokenizer.json``: a bad option never leaves a
half-made run behind, and a folder that another process is training into is
refused before anything in it is touched. On ``--resume`` it reloads the
run's own options, refuses a different corpus or vocabulary, and lets only
the resumable options (budget, evaluation, device) change. A new run's
folder is held by a claim (claim.py); a fine-tune's base is folded into the
options first (finetune.py).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from ..config import (
    CELL_NAMES,
    DEFAULT_EPOCHS,
    RESUMABLE,
    ModelConfig,
    Options,
    PrepareOptions,
    TrainConfig,
    layer_options,
)
from ..config.options import specs
from ..data.batches import RandomWindows, StatefulStreams
from ..data.prepared import PreparedCorpus, prepare
from ..errors import ChargenError
from ..model.devices import resolve_device
from ..model.precision import resolve_precision
from ..runs.checkpoint import sweep_staging
from ..runs.corpus import corpus_summary, run_corpus
from ..runs.folder import FORMAT_VERSION, RunFolder, RunLock, check_run_dir, last_dir, open_run_dir, read_json
from ..version import __version__
from . import distributed
from .budget import schedule_lr, step_budget
from .claim import RunClaim
from .finetune import fine_tune_base


@dataclass
class Run:
    """An opened run: its folder (locked by rank 0), corpus, configs, schedule length and device."""

    dir: Path
    corpus: PreparedCorpus
    model_config: ModelConfig
    train_config: TrainConfig
    decay_steps: int | None  # the decay's length in steps, or None
    decay_time: float | None  # the decay's length in seconds (a --max-time budget), or None
    resuming: bool
    device: torch.device
    precision: str  # resolved: fp32, bf16 or fp16
    rank: int = 0
    world_size: int = 1
    lock: RunLock | None = None  # rank 0's lock on the folder
    claim: RunClaim | None = None  # rank 0's claim on a new run's folder, until its first checkpoint
    init: dict | None = None  # a fine-tune's base (see finetune.py): its weights start the model
    counts: np.ndarray | None = None  # a new adaptive-softmax run's training counts: its characters' order

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def resume_hint(self) -> str:
        folder = self.claim.out if self.claim is not None else self.dir
        return f"chargen train --out {shlex.quote(str(folder))} --resume"

    def close(self) -> None:
        """Let go of the folder's lock."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def settle(self) -> None:
        """Called after each checkpoint: the first one makes a new run real (and replaces an overwritten one)."""
        if self.claim is not None:
            self.dir = self.claim.settle()
            self.claim = None

    def abandon_if_unstarted(self) -> None:
        """A new run that fails (or is interrupted) before its first checkpoint leaves nothing behind."""
        if self.claim is not None:
            self.claim.abandon()
            self.claim = self.lock = None


def open_run(
    source: str | os.PathLike[str] | None = None,
    *,
    out: str | os.PathLike[str],
    resume: bool = False,
    overwrite: bool = False,
    corpora_dirs: Sequence[str | os.PathLike[str]] = (),
    cache_dir: str | os.PathLike[str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    preset: str | None = None,
    options: Mapping[str, Any] | None = None,
    init_from: str | os.PathLike[str] | None = None,
    init_checkpoint: str | None = None,
    keep_vocab: bool = False,
) -> Run:
    """Layer and check the options, lock the folder, prepare the corpus, and create or reopen the run.
    ``init_from``: a run folder whose weights, shape and vocabulary the new run starts from (fine-tuning)."""
    if not isinstance(out, (str, os.PathLike)) or str(out) == "":
        raise ChargenError(f"--out must name a run folder, got {out!r}")
    opts = layer_options(source, config_file, preset, dict(options or {}))
    if resume and overwrite:
        raise ChargenError("--resume and --overwrite contradict each other; pass one")
    if init_from is None and (init_checkpoint is not None or keep_vocab):
        raise ChargenError(
            f"{'--init-checkpoint' if init_checkpoint is not None else '--keep-vocab'} goes with --init-from BASE_RUN"
        )
    base = None
    if init_from is not None:
        if resume:
            raise ChargenError(
                "--init-from starts a new run; a resumed run has its weights already (leave --init-from out)"
            )
        base = fine_tune_base(init_from, init_checkpoint or "best", keep_vocab, opts)
    where = dict(corpora_dirs=corpora_dirs, cache_dir=cache_dir)
    out = Path(out)
    if Path.cwd().is_relative_to(out.resolve()):  # --out . (or ..): the folder's contents are replaced around us
        out = Path(os.path.abspath(out))
    return _resume(out, opts, where) if resume else _create(out, opts, overwrite, where, base)


def _create(out: Path, opts: Options, overwrite: bool, where: dict, base: dict | None = None) -> Run:
    train_opts = dict(opts.train)
    if not ({"max_steps", "epochs", "max_time"} & set(train_opts)):
        train_opts["epochs"] = DEFAULT_EPOCHS
    train_cfg = TrainConfig(**train_opts)
    cell = ModelConfig(vocab_size=_ANY_VOCAB, **opts.model).cell  # bad options fail before any work
    PrepareOptions(**opts.prepare)
    device, precision, rank, world = _devices(train_cfg, cell)
    if train_cfg.batch_size % world:  # checked before the folder is touched
        raise ChargenError(f"batch size {train_cfg.batch_size} must be a multiple of the {world} processes")
    claim = distributed.main_first(world, rank, lambda: RunClaim(out, overwrite), others=False)
    try:
        corpus = distributed.main_first(world, rank, lambda: prepare(opts.source, **where, **opts.prepare))
        model_cfg = ModelConfig(vocab_size=len(corpus.vocab), **opts.model)
        counts = None
        if model_cfg.softmax != "full" and base is None:
            counts = corpus.counts("train")
            model_cfg = model_cfg.resolve_softmax(counts)
        _check_fits(model_cfg, device)
        decay_steps, decay_time = _decay(train_cfg, _batches_per_epoch(corpus, train_cfg))
        if base is not None:
            base = dict(
                base, added_chars=corpus.meta.get("added_chars", 0), unknown_chars=corpus.meta.get("unknown_chars", 0)
            )
        config = _new_config(model_cfg, train_cfg, (decay_steps, decay_time), corpus, opts, world, base)
        # rank 0 only, which made the claim
        distributed.main_first(world, rank, lambda: cast(RunClaim, claim).fill(config, corpus), others=False)
    except BaseException:
        if claim is not None:
            claim.abandon()
        raise
    return Run(
        claim.dir if claim else out,
        corpus,
        model_cfg,
        train_cfg,
        decay_steps,
        decay_time,
        resuming=False,
        device=device,
        precision=precision,
        rank=rank,
        world_size=world,
        lock=claim.lock if claim else None,
        claim=claim,
        init=base,
        counts=counts if model_cfg.adaptive else None,
    )


def _new_config(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    decay: tuple,
    corpus: PreparedCorpus,
    opts: Options,
    world: int,
    base: dict | None,
) -> dict:
    """What a new run's ``config.json`` holds (see docs/design.md, the run folder)."""
    config = {
        "format_version": FORMAT_VERSION,
        "model": model_cfg.to_dict(),
        "train": train_cfg.to_dict(),
        "schedule": {"decay_steps": decay[0], "decay_time": decay[1]},
        "corpus": corpus_summary(corpus, opts),
        "versions": {"chargen": __version__, "torch": torch.__version__, "python": sys.version.split()[0]},
        "world_size": world,
    }
    if base is not None:  # a fine-tune: where it started (the weights themselves are not config)
        config["init"] = {k: v for k, v in base.items() if k != "weights"}
    return config


_ANY_VOCAB = 0x110000 + 1  # more characters than Unicode has: checks the options before the corpus is read


def _check_fits(cfg: ModelConfig, device: torch.device) -> None:
    """Refuse, before anything is allocated, a model whose training state cannot fit in memory."""
    need = cfg.num_parameters * 4 * 4  # fp32 weights, gradients and AdamW's two moments
    try:
        if device.type == "cuda":
            have = torch.cuda.get_device_properties(device).total_memory
        else:
            have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no way to know here: let the allocator decide
        return
    if need > have:
        raise ChargenError(
            f"a {CELL_NAMES[cfg.cell]} {cfg.num_layers}x{cfg.hidden_size} model (embedding "
            f"{cfg.embedding_size}) has {cfg.num_parameters:,} parameters, about {need // 2**30:,} "
            f"GiB to train, more than the {have / 2**30:,.1f} GiB of {device.type} memory here; "
            "use a smaller --hidden, --layers or --embedding"
        )


def _devices(cfg: TrainConfig, cell: str) -> tuple[torch.device, str, int, int]:
    """Resolve device and precision (for a model of this cell), then join the process group:
    (device, precision, rank, world)."""
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device, cell)
    rank, world, device = distributed.init(device)
    return device, precision, rank, world


def _batches_per_epoch(corpus: PreparedCorpus, cfg: TrainConfig) -> int:
    """Batches per epoch; fails early when the training split is too short for one batch."""
    layout = StatefulStreams if cfg.layout == "stateful" else RandomWindows
    return len(layout(corpus.reader("train"), cfg.batch_size, cfg.bptt))


def _decay(cfg: TrainConfig, batches_per_epoch: int) -> tuple[int | None, float | None]:
    """The decay's length: --decay-steps, else the budget the run is created with (steps or time)."""
    if cfg.decay_steps is not None:
        return cfg.decay_steps, None
    return step_budget(cfg, batches_per_epoch), cfg.max_time


def _resume(out: Path, opts: Options, where: dict) -> Run:
    folder = open_run_dir(check_run_dir(out))
    train_cfg = _resumed_train_config(folder, opts)
    device, precision, rank, world = _devices(train_cfg, folder.model_config.cell)
    lock = distributed.main_first(world, rank, lambda: RunLock(out), others=False)
    try:
        if lock is not None:  # the folder is ours: what a killed writer left half-written goes
            sweep_staging(out)
        _check_not_finished(last_dir(out), opts)  # a resume needs a complete checkpoint, of a run to go on with
        corpus = distributed.main_first(world, rank, lambda: run_corpus(folder, opts.source, from_cache=False, **where))
        _check_budget_left(last_dir(out), train_cfg, _batches_per_epoch(corpus, train_cfg), folder.config)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    sched = folder.config.get("schedule", {})
    return Run(
        out,
        corpus,
        folder.model_config,
        train_cfg,
        sched.get("decay_steps"),
        sched.get("decay_time"),
        resuming=True,
        device=device,
        precision=precision,
        rank=rank,
        world_size=world,
        lock=lock,
    )


def _resumed_train_config(folder: RunFolder, opts: Options) -> TrainConfig:
    """The run's own TrainConfig with the resumable options the user gave; any other change is refused."""
    if opts.preset is not None:
        raise ChargenError(
            f"--preset {opts.preset} applies when a run is created; a resumed run keeps its options (drop --preset)"
        )
    created = {
        "model": folder.model_config.to_dict(),
        "train": folder.train_config.to_dict(),
        "corpus": asdict(PrepareOptions(**folder.prepare)),
    }
    for what, cls, given in (
        ("model", ModelConfig, opts.model),
        ("corpus", PrepareOptions, opts.prepare),
        ("train", TrainConfig, opts.train),
    ):
        for k, v in given.items():
            if k not in opts.explicit or created[what][k] == v or k in RESUMABLE:
                continue
            flag = specs(cls)[k].flag
            rule = (
                "every evaluation of a run scores the same sample"
                if k == "eval_chars"
                else "only budget, evaluation and device options change on resume"
                if what == "train"
                else f"a resumed run keeps its {what} options"
            )
            was = f"without --{flag}" if created[what][k] is None else f"with --{flag} {created[what][k]!r}"
            raise ChargenError(f"the run was created {was}, not {v!r}; {rule} (drop the flag)")
    merged = created["train"]
    merged.update({k: v for k, v in opts.train.items() if k in opts.explicit and k in RESUMABLE})
    budget = {"max_steps", "epochs", "max_time"}
    if budget & opts.explicit:  # a new budget replaces the old one whole, of whatever kind it was
        merged.update({k: (opts.train[k] if k in opts.explicit else None) for k in budget})
    return TrainConfig(**merged)


class AlreadyFinished(Exception):
    """A plain resume of a run that finished (its budget spent, or stopped by --patience): nothing to do.
    Not an error: ``train`` returns the run's result as it stands, as a resume of a finished run does in
    Hugging Face's Trainer and Lightning. ``info`` is the run's ``last/trainer.json``."""

    def __init__(self, run_dir: Path, info: dict):
        super().__init__(f"{run_dir} already finished")
        self.run_dir, self.info = run_dir, info


def _check_not_finished(last: Path, opts: Options) -> None:
    """A run that finished goes on only with a new budget; without one, AlreadyFinished."""
    info = read_json(last / "trainer.json")
    if info.get("stopped") and not ({"max_steps", "epochs", "max_time"} & opts.explicit):
        raise AlreadyFinished(last.parent, info)


def _source_arg(config: dict) -> str:
    """The run's source as a command's first argument (with a trailing space): the path as given where it
    still names the file from here, else from the folder the run was created in; '' for the default corpus."""
    corpus = config.get("corpus", {})
    source = corpus.get("requested_source")
    if not source:
        return ""
    there = Path(corpus.get("working_folder") or ".") / source
    if not Path(source).exists() and there.exists():
        source = str(there)
    return f"{shlex.quote(str(source))} "


def _check_budget_left(last: Path, cfg: TrainConfig, batches_per_epoch: int, config: dict) -> None:
    """A finished run given a new budget that it has already spent, or whose learning rate has decayed to
    0, would train nothing: say so."""
    info = read_json(last / "trainer.json")
    sched = config.get("schedule", {})
    if (
        schedule_lr(
            cfg, info.get("step", 0), info.get("elapsed", 0.0), sched.get("decay_steps"), sched.get("decay_time")
        )
        == 0.0
    ):
        raise ChargenError(
            f"{last.parent} is at step {info.get('step')}, past the end of its learning-rate decay, where "
            "--min-lr-ratio 0 puts the learning rate at 0: more steps would change nothing; to "
            f"train on, start a new run from its weights: chargen train {_source_arg(config)}--init-from "
            f"{shlex.quote(str(last.parent))} --out NEW_RUN"
        )
    steps = step_budget(cfg, batches_per_epoch)
    spent = (steps is not None and info.get("step", 0) >= steps) or (
        cfg.max_time is not None and info.get("elapsed", 0.0) >= cfg.max_time
    )
    if info.get("stopped") and spent:  # a budget it has already met: nothing to do, as without one
        raise AlreadyFinished(last.parent, info)
