"""The run directory: written atomically, loaded safely (no pickle anywhere).

::

    RUN/
      config.json          model config, train config, corpus summary, versions, format version
      tokenizer.json       the vocabulary (tokenizers.Tokenizer.from_file loads it)
      model.safetensors    best weights so far by validation loss, CPU tensors
      last/                what --resume needs
        model.safetensors      weights
        optimizer.safetensors  AdamW moments and step counts
        state.safetensors      carried hidden state, RNG states
        trainer.json           step, elapsed time, best loss, schedule, optimizer hyperparameters
      metrics.jsonl        one JSON object per log line

Every file is written under a temporary name and renamed into place; ``last/``
is written as a whole new folder and swapped in, so a crash at any moment
leaves the previous checkpoint readable.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import ChargenError

FORMAT_VERSION = 1


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # mkstemp makes 0600 files; run files get the usual permissions
RUN_FILES = ("config.json", "tokenizer.json", "model.safetensors")
LAST_FILES = ("model.safetensors", "optimizer.safetensors", "state.safetensors", "trainer.json")


def write_json(path: Path, obj) -> None:
    """Write JSON atomically."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Write safetensors atomically; tensors go to CPU and are made contiguous."""
    path = Path(path)
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(cpu, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()})
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ChargenError(f"{path} is missing; the run folder is incomplete") from None
    except (OSError, ValueError) as e:
        raise ChargenError(f"{path} is not readable JSON ({e}); the run folder is corrupt") from None
    if not isinstance(data, dict):
        raise ChargenError(f"{path} does not hold a JSON object; the run folder is corrupt")
    return data


def read_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise ChargenError(f"{path} is missing; the run folder is incomplete")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ChargenError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0]}); "
                           "the run folder is corrupt") from None


def model_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights without duplicates: tied weights are stored once (safetensors refuses shared memory)."""
    sd = model.state_dict()
    if getattr(model.config, "tie_weights", False):
        sd = {k: v for k, v in sd.items() if k != "head.weight"}
    return sd


def load_model_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Load weights, checking names and shapes, with a user-level error when they do not fit."""
    expected = model_state_dict(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        raise ChargenError(f"{path} does not fit the model in config.json (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}, wrong shape {wrong[:3]}); the run folder is corrupt")
    model.load_state_dict(tensors, strict=not getattr(model.config, "tie_weights", False))
    for k, v in tensors.items():
        if not torch.isfinite(v).all():
            raise ChargenError(f"{path} holds non-finite values in {k}; the run folder is corrupt")


# --------------------------------------------------------------------------- optimizer state


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """AdamW's state as flat named tensors plus its param groups as JSON-able dicts."""
    sd = optimizer.state_dict()
    tensors = {}
    for index, st in sd["state"].items():
        for key, value in st.items():
            tensors[f"{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    groups = []
    for g in sd["param_groups"]:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()})
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
        raise ChargenError(f"the optimizer state in last/ does not fit the model ({e}); "
                           "the run folder is corrupt") from None


# --------------------------------------------------------------------------- last/


def write_last(run_dir: Path, files: dict[str, dict | tuple]) -> None:
    """Write ``last/`` as a new folder and swap it in.

    ``files`` maps a file name to a JSON object, or to ``(tensors, metadata)``
    for safetensors.
    """
    run_dir = Path(run_dir)
    tmp = Path(tempfile.mkdtemp(prefix=".last.", dir=run_dir))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        for name, content in files.items():
            if name.endswith(".json"):
                write_json(tmp / name, content)
            else:
                tensors, meta = content
                write_tensors(tmp / name, tensors, meta)
        last, old = run_dir / "last", run_dir / "last.old"
        if last.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.rename(last, old)
        os.rename(tmp, last)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def last_dir(run_dir: Path) -> Path:
    """``last/``, or ``last.old/`` if a crash hit between the two renames of a swap."""
    run_dir = Path(run_dir)
    for name in ("last", "last.old"):
        d = run_dir / name
        if all((d / f).is_file() for f in LAST_FILES):
            return d
    raise ChargenError(f"{run_dir} has no complete last/ checkpoint to resume from; "
                       "start a new run (pass --overwrite to replace this one)")


def check_run_dir(run_dir: Path) -> Path:
    """The run folder, if it holds the documented files; else a ChargenError saying what is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ChargenError(f"run folder {run_dir} does not exist; train one with chargen train --out {run_dir}")
    missing = [f for f in RUN_FILES if not (run_dir / f).is_file()]
    if missing:
        raise ChargenError(f"{run_dir} is not a complete run folder (missing {', '.join(missing)}); "
                           "train it again or point at another run")
    return run_dir


def read_config(run_dir: Path) -> dict:
    config = read_json(Path(run_dir) / "config.json")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise ChargenError(f"{run_dir}/config.json has format version {version!r}; this chargen reads "
                           f"version {FORMAT_VERSION}: upgrade chargen or retrain")
    for key in ("model", "train", "corpus"):
        if not isinstance(config.get(key), dict):
            raise ChargenError(f"{run_dir}/config.json has no {key!r} section; the run folder is corrupt")
    return config
