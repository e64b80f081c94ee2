"""``chargen info``: what a run is and how far it got, read without loading its weights."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ..errors import ChargenError
from .folder import open_run_dir, read_json

_CORPUS_KEYS = ("source", "fingerprint", "chars", "train_chars", "val_chars", "test_chars", "vocab_size")


def run_info(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON-able summary of a run folder."""
    run = open_run_dir(run_dir)
    return {
        "run": str(run.dir),
        "model": run.config["model"],
        "train": run.config["train"],
        "corpus": {k: run.config["corpus"].get(k) for k in _CORPUS_KEYS},
        "parameters": _parameters(run.dir / "model.safetensors"),
        **_progress(run.dir),
        "versions": run.config.get("versions", {}),
        "init": run.config.get("init"),
    }


def _parameters(path: Path) -> int:
    """The number of stored parameters, from the safetensors header alone (integer tensors, such as the
    adaptive softmax's frequency order, are not parameters)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:  # no torch
            return sum(
                math.prod(f.get_slice(k).get_shape())
                for k in f.keys()
                if not f.get_slice(k).get_dtype().startswith(("I", "U"))
            )
    except Exception as e:  # safetensors raises its own error types
        raise ChargenError(f"{path} is not readable ({e}); the run folder is corrupt") from None


def _progress(run_dir: Path) -> dict:
    """Steps, time and best validation loss so far, from the resume checkpoint when there is one."""
    t = {}
    for name in ("last", "last.old"):
        if (run_dir / name / "trainer.json").is_file():
            t = read_json(run_dir / name / "trainer.json")
            break
    best = t.get("best_val_loss")
    return {
        "steps": t.get("step", 0),
        "elapsed": t.get("elapsed", 0.0),
        "best_val_loss": best,
        "best_val_bpc": None if best is None else best / math.log(2),
        "best_step": t.get("best_step"),
    }
