"""Opening a run folder for training: new, overwritten or resumed; and writing to it.

``open_run`` layers the options (preset < TOML file < keyword options),
prepares the corpus, and checks everything that can be wrong *before* the
folder is created, so a bad option never leaves a half-made run behind. On
``--resume`` it reloads the run's own options, refuses a different corpus or
vocabulary, and lets only budget and bookkeeping options change.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__, distributed
from .checkpoint import (FORMAT_VERSION, check_run_dir, last_dir, load_model_weights, load_optimizer,
                         model_state_dict, optimizer_tensors, read_config, read_json, read_tensors,
                         write_json, write_last, write_tensors)
from .data import PreparedCorpus, prepare
from .errors import ChargenError
from .model import ModelConfig, state_from_tensors, state_tensors
from .trainconfig import (MODEL_KEYS, PREPARE_KEYS, RESUMABLE, TRAIN_KEYS, TrainConfig, canonical,
                          load_toml, parse_duration, preset as get_preset, resolve_device,
                          resolve_precision)

DEFAULT_EPOCHS = 10  # the budget when none is given


@dataclass
class Run:
    dir: Path
    corpus: PreparedCorpus
    model_config: ModelConfig
    train_config: TrainConfig
    decay_steps: int | None
    decay_time: float | None
    resuming: bool
    source: str | None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap_model(self, model):
        """DistributedDataParallel with several processes; the model itself otherwise."""
        if self.world_size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def resume_hint(self) -> str:
        return f"chargen train --out {shlex.quote(str(self.dir))} --resume"


def _layer(source, config_file, preset, options) -> tuple[str | None, dict, set[str]]:
    """Merge preset < TOML < options; returns (source, options, keys the user gave explicitly)."""
    file_opts = load_toml(config_file) if config_file else {}
    preset = preset or file_opts.pop("preset", None)
    file_opts.pop("preset", None)
    given = {canonical(k): v for k, v in options.items() if v is not None}
    merged = {**(get_preset(preset) if preset else {}), **file_opts, **given}
    src = source if source is not None else merged.pop("source", None)
    merged.pop("source", None)
    unknown = sorted(set(merged) - MODEL_KEYS - TRAIN_KEYS - PREPARE_KEYS)
    if unknown:
        raise ChargenError(f"unknown option(s) {', '.join(unknown)}")
    if "max_time" in merged:
        merged["max_time"] = parse_duration(merged["max_time"])
    explicit = set(file_opts) | set(given)
    return src, merged, explicit


def _split(opts: dict) -> tuple[dict, dict, dict]:
    model = {k: v for k, v in opts.items() if k in MODEL_KEYS}
    train = {k: v for k, v in opts.items() if k in TRAIN_KEYS}
    prep = {k: v for k, v in opts.items() if k in PREPARE_KEYS}
    return model, train, prep


def open_run(source=None, *, out, resume=False, overwrite=False, corpora_dirs=(), cache_dir=None,
             config_file=None, preset=None, options=None) -> Run:
    out = Path(out)
    src, opts, explicit = _layer(source, config_file, preset, dict(options or {}))
    model_opts, train_opts, prep_opts = _split(opts)
    if resume:
        if overwrite:
            raise ChargenError("--resume and --overwrite contradict each other; pass one")
        return _resume(out, src, model_opts, train_opts, prep_opts, explicit, corpora_dirs, cache_dir)

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        is_run = (out / "config.json").is_file()
        if not overwrite:
            what = "a run" if is_run else "not empty"
            raise ChargenError(f"{out} already exists ({what}); pass --resume to continue it, --overwrite to "
                               "replace it, or choose another --out")
        if not is_run:
            raise ChargenError(f"{out} exists and is not a chargen run folder; --overwrite only replaces runs. "
                               "Choose another --out")

    if not ({"max_steps", "epochs", "max_time"} & set(train_opts)):
        train_opts["epochs"] = DEFAULT_EPOCHS
    train_cfg = TrainConfig(**train_opts)
    ModelConfig(vocab_size=1, **model_opts)          # bad model options fail before any work
    device = resolve_device(train_cfg.device)
    resolve_precision(train_cfg.precision, device)
    rank, world, device = distributed.init(device)
    corpus = distributed.main_first(world, rank, lambda: prepare(
        src, corpora_dirs=corpora_dirs, cache_dir=cache_dir, **prep_opts))
    model_cfg = ModelConfig(vocab_size=len(corpus.vocab), **model_opts)
    batches_per_epoch = _check_batches(corpus, train_cfg)

    decay_steps, decay_time = train_cfg.decay_steps, None
    if decay_steps is None:
        budgets = []
        if train_cfg.max_steps is not None:
            budgets.append(train_cfg.max_steps)
        if train_cfg.epochs is not None:
            budgets.append(math.ceil(train_cfg.epochs * batches_per_epoch))
        decay_steps = min(budgets) if budgets else None
        decay_time = train_cfg.max_time

    config = {
        "format_version": FORMAT_VERSION,
        "model": model_cfg.to_dict(),
        "train": train_cfg.to_dict(),
        "schedule": {"decay_steps": decay_steps, "decay_time": decay_time},
        "corpus": {**corpus.summary(), "prepare": {**prep_opts},
                   "requested_source": None if src is None else str(src)},
        "versions": {"chargen": __version__, "torch": torch.__version__, "python": sys.version.split()[0]},
    }
    config["corpus"].pop("cache_dir", None)
    config["corpus"].pop("reused", None)
    config["world_size"] = world

    def create():
        if overwrite and out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", config)
        corpus.vocab.save(out / "tokenizer.json")

    distributed.main_first(world, rank, create, others=False)
    return Run(out, corpus, model_cfg, train_cfg, decay_steps, decay_time, resuming=False, source=src,
               device=device, rank=rank, world_size=world)


def _check_batches(corpus: PreparedCorpus, cfg: TrainConfig) -> int:
    """Fail early when the training split is too short for one batch; batches per epoch."""
    from .batches import RandomWindows, StatefulStreams
    layout = StatefulStreams if cfg.layout == "stateful" else RandomWindows
    return len(layout(corpus.train, cfg.batch_size, cfg.bptt))


def _resume(out, src, model_opts, train_opts, prep_opts, explicit, corpora_dirs, cache_dir) -> Run:
    check_run_dir(out)
    config = read_config(out)
    last_dir(out)  # a resume needs a complete checkpoint
    stored_model, stored_train = config["model"], config["train"]
    stored_prep = config["corpus"].get("prepare", {})
    for given, stored, what in ((model_opts, stored_model, "model"), (prep_opts, stored_prep, "corpus")):
        for k, v in given.items():
            if k in explicit and stored.get(k) != v:
                raise ChargenError(f"the run was created with {k.replace('_', '-')}={stored.get(k)!r}, "
                                   f"not {v!r}; a resumed run keeps its {what} options (drop the flag)")
    for k, v in train_opts.items():
        if k in explicit and k not in RESUMABLE and stored_train.get(k) != v:
            raise ChargenError(f"the run was created with --{k.replace('_', '-')} {stored_train.get(k)!r}, "
                               f"not {v!r}; only budget, evaluation and device options change on resume")
    merged_train = dict(stored_train)
    for k, v in train_opts.items():
        if k in RESUMABLE and k in explicit:
            merged_train[k] = v
    train_cfg = TrainConfig(**merged_train)
    model_cfg = ModelConfig.from_dict(stored_model)
    device = resolve_device(train_cfg.device)
    resolve_precision(train_cfg.precision, device)
    rank, world, device = distributed.init(device)

    source = src if src is not None else config["corpus"].get("requested_source")
    corpus = distributed.main_first(world, rank, lambda: prepare(
        source, corpora_dirs=corpora_dirs, cache_dir=cache_dir, **stored_prep))
    stored = config["corpus"]
    if corpus.fingerprint != stored.get("fingerprint"):
        raise ChargenError(
            f"this corpus differs from the run's: the run was trained on {stored.get('source')} "
            f"({stored.get('chars'):,} characters, fingerprint {str(stored.get('fingerprint'))[:12]}), this is "
            f"{corpus.meta['source']} ({corpus.meta['chars']:,} characters, fingerprint {corpus.fingerprint[:12]}); "
            "resume on the same text, or start a new run")
    from .tokenizer import CharVocab
    run_vocab = CharVocab.load(out / "tokenizer.json")
    if run_vocab.chars != corpus.vocab.chars:
        raise ChargenError("the run's tokenizer.json differs from the corpus vocabulary; the run folder was "
                           "changed by hand: start a new run")
    _check_batches(corpus, train_cfg)
    sched = config.get("schedule", {})
    return Run(out, corpus, model_cfg, train_cfg, sched.get("decay_steps"), sched.get("decay_time"),
               resuming=True, source=source, device=device, rank=rank, world_size=world)


class RunWriter:
    """Everything the trainer writes: metrics, best weights, last/, and its restore."""

    def __init__(self, run: Run, trainer):
        self.run, self.t = run, trainer
        self.last_eval_step = None
        self._metrics = None

    # -- metrics -----------------------------------------------------------

    def begin(self):
        if self.run.is_main:
            self._metrics = open(self.run.dir / "metrics.jsonl", "a", encoding="utf-8")

    def metrics(self, row: dict):
        if self._metrics is not None:
            self._metrics.write(json.dumps(row) + "\n")
            self._metrics.flush()

    def event(self, name: str, **fields):
        self.metrics({"step": self.t.step, "event": name, **fields})

    def end(self, stopped: str):
        self.event("stopped", reason=stopped)
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None

    def say(self, text: str, bar=None):
        if not self.run.is_main:
            return
        if bar is not None:
            bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    # -- weights -----------------------------------------------------------

    def _weights(self) -> dict[str, torch.Tensor]:
        sd = model_state_dict(self.t.model)
        bad = [k for k, v in sd.items() if not torch.isfinite(v).all()]
        if bad:  # never write a checkpoint with non-finite weights
            raise ChargenError(f"weights became non-finite ({', '.join(bad[:3])}); nothing was saved over the "
                               f"last good checkpoint in {self.run.dir}/last: lower --lr and resume")
        return sd

    def save_best(self):
        if self.run.is_main:
            write_tensors(self.run.dir / "model.safetensors", self._weights(),
                          {"step": self.t.step, "val_loss": self.t.best_val})

    def checkpoint(self):
        """Write last/. With several processes every rank must call it: states and RNGs are gathered."""
        t, world = self.t, self.run.world_size
        carried = state_tensors(t.state) if t.state is not None else {}
        rng = {"rng_cpu": torch.get_rng_state()}
        if t.device.type == "cuda":
            rng["rng_cuda"] = torch.cuda.get_rng_state(t.device)
        if world > 1:  # the full (L, B, H) state, and every rank's RNG
            carried = {k: distributed.gather_rows(v, world, dim=1) for k, v in carried.items()}
            rng = {f"{k}.{r}": v for k, v in rng.items()
                   for r, v in enumerate(distributed.gather_cpu_bytes(v, world))}
        if not self.run.is_main:
            return
        if not (self.run.dir / "model.safetensors").is_file():
            self.save_best()
        opt_tensors, groups = optimizer_tensors(t.optimizer)
        extra = dict(rng)
        extra.update({f"state.{k}": v for k, v in carried.items()})
        trainer = {
            "step": t.step, "elapsed": t.elapsed, "best_val_loss": t.best_val, "best_step": t.best_step,
            "evals_since_best": t.evals_since_best, "bad_streak": t.bad_streak,
            "last_eval_step": self.last_eval_step, "optimizer_groups": groups,
            "scaler": t.scaler.state_dict() if t.scaler.is_enabled() else None,
            "has_state": t.state is not None, "world_size": world,
        }
        write_last(self.run.dir, {
            "model.safetensors": (self._weights(), {"step": t.step}),
            "optimizer.safetensors": (opt_tensors, None),
            "state.safetensors": (extra, None),
            "trainer.json": trainer,
        })

    def restore(self):
        t, d = self.t, last_dir(self.run.dir)
        world, rank = self.run.world_size, self.run.rank
        load_model_weights(t.model, read_tensors(d / "model.safetensors"), d / "model.safetensors")
        info = read_json(d / "trainer.json")
        saved_world = info.get("world_size", 1)
        if saved_world != world:
            raise ChargenError(f"{self.run.dir} was checkpointed by {saved_world} process(es); resume it with "
                               f"the same number (this is {world})")
        try:
            opt = read_tensors(d / "optimizer.safetensors", device=t.device)
            load_optimizer(t.optimizer, opt, info["optimizer_groups"])
            extra = read_tensors(d / "state.safetensors")
            t.step, t.elapsed = int(info["step"]), float(info["elapsed"])
            t.best_val, t.best_step = info["best_val_loss"], info["best_step"]
            t.evals_since_best, t.bad_streak = int(info["evals_since_best"]), int(info["bad_streak"])
            self.last_eval_step = info.get("last_eval_step")
            suffix = f".{rank}" if world > 1 else ""
            torch.set_rng_state(extra["rng_cpu" + suffix])
            if "rng_cuda" + suffix in extra and t.device.type == "cuda":
                torch.cuda.set_rng_state(extra["rng_cuda" + suffix], t.device)
            if info.get("scaler") and t.scaler.is_enabled():
                t.scaler.load_state_dict(info["scaler"])
            if info["has_state"]:
                rows = getattr(t.batches, "rows", slice(None))  # this rank's streams
                st = {k.split(".", 1)[1]: v[:, rows].contiguous().to(t.device)
                      for k, v in extra.items() if k.startswith("state.")}
                t.state = state_from_tensors(st, self.run.model_config.cell)
        except (KeyError, TypeError, ValueError) as e:
            raise ChargenError(f"{d} is incomplete or corrupt ({type(e).__name__}: {e}); "
                               "start a new run with --overwrite") from None
        if self.run.is_main:
            self._truncate_metrics(t.step)

    def _truncate_metrics(self, step: int):
        """Drop log lines written after the checkpoint by a run that then died."""
        path = self.run.dir / "metrics.jsonl"
        if not path.is_file():
            return
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except ValueError:
                continue
        tmp = path.with_name(".metrics.jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
        os.replace(tmp, path)
