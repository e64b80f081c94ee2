"""``chargen info``: what a run is and how far it got, read without loading weights."""

from __future__ import annotations

import math
from pathlib import Path

from .checkpoint import check_run_dir, read_config, read_json
from .errors import ChargenError


def run_info(run_dir) -> dict:
    """A JSON-able summary of a run folder."""
    run_dir = check_run_dir(Path(run_dir))
    config = read_config(run_dir)
    from safetensors import safe_open
    try:
        with safe_open(str(run_dir / "model.safetensors"), framework="pt") as f:
            params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    except Exception as e:  # safetensors raises its own error types
        raise ChargenError(f"{run_dir}/model.safetensors is not readable ({e}); the run folder is corrupt") from None
    steps, elapsed, best, best_step = 0, 0.0, None, None
    for name in ("last", "last.old"):
        if (run_dir / name / "trainer.json").is_file():
            t = read_json(run_dir / name / "trainer.json")
            steps, elapsed = t.get("step", 0), t.get("elapsed", 0.0)
            best, best_step = t.get("best_val_loss"), t.get("best_step")
            break
    corpus = {k: config["corpus"].get(k) for k in ("source", "fingerprint", "chars", "train_chars", "val_chars",
                                                    "test_chars", "vocab_size")}
    return {
        "run": str(run_dir), "model": config["model"], "train": config["train"], "corpus": corpus,
        "parameters": params, "steps": steps, "elapsed": elapsed, "best_val_loss": best,
        "best_val_bpc": None if best is None else best / math.log(2), "best_step": best_step,
        "versions": config.get("versions", {}),
    }
