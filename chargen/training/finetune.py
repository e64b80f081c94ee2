"""Fine-tuning (``--init-from BASE_RUN``): the base run checked and folded into the new run's options.

The new run takes the base's shape, vocabulary (grown by the characters the
new corpus adds, unless ``--keep-vocab``) and text normalization; its
learning rate and warmup default to what suits weights that are already
trained. The trainer starts the model from the base's weights.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import ModelConfig, Options, PrepareOptions, preset
from ..config.options import specs
from ..errors import ChargenError
from ..runs.folder import check_run_dir, last_dir, open_run_dir
from ..runs.info import run_info

# What a fine-tune changes in the defaults, unless given: its peak learning rate is the base's (not the
# library default) up to FINE_TUNE_MAX_LR, and its warmup short (the weights are already trained; a fine-tune
# is short). Measured (scripts/bench_finetune.py, 1 minute on 86 KB of licences from a 4-minute Shakespeare
# base): from a base trained at 4e-3, the base's 4e-3 reached 1.601 bpc, half of it 1.645, a quarter 1.768 (a
# lower peak, the usual advice, lost); from the cpu preset's base trained at 1.3e-2 (2026-12-04), 4e-3
# reached 1.597 and the base's 1.3e-2 1.669, overfitting the small text from its first evaluation on.
FINE_TUNE_MAX_LR = 4e-3
FINE_TUNE_WARMUP = 20
_SHAPE = ("cell", "num_layers", "hidden_size", "embedding_size", "tie_weights", "softmax", "cutoffs")


def fine_tune_base(init_from: str | os.PathLike[str], checkpoint: str, keep_vocab: bool, opts: Options) -> dict:
    """Check the base run and fold it into ``opts`` (shape, vocabulary, normalization, fine-tune defaults);
    what the new run's config.json records of it."""
    if checkpoint not in ("best", "last"):
        raise ChargenError(f"--init-checkpoint must be best or last, got {checkpoint!r}")
    if not isinstance(init_from, (str, os.PathLike)) or str(init_from) == "":
        raise ChargenError(f"--init-from must name a run folder, got {init_from!r}")
    if Path(init_from).exists() and not Path(init_from).is_dir():
        raise ChargenError(f"--init-from {init_from} is a file, not a run folder; name the folder of a trained run")
    base = open_run_dir(check_run_dir(Path(init_from)))
    if checkpoint == "best":
        weights = base.dir / "model.safetensors"
    else:
        try:
            weights = last_dir(base.dir) / "model.safetensors"
        except ChargenError:
            raise ChargenError(
                f"{base.dir} has no complete last/ checkpoint; start from its best weights (--init-checkpoint best)"
            ) from None
    for name in _SHAPE:
        if name in opts.explicit and opts.model.get(name) != getattr(base.model_config, name):
            flag = specs(ModelConfig)[name].flag
            raise ChargenError(
                f"--{flag} would change the model's shape; a fine-tune takes its shape from "
                f"{base.dir} (leave --{flag} out)"
            )
    for name in ("normalize", "lowercase"):
        base_value = base.prepare.get(name, getattr(PrepareOptions, name))
        if name in opts.explicit and opts.prepare.get(name) != base_value:
            raise ChargenError(
                f"--{name} must be what {base.dir} was prepared with ({base_value!r}): its "
                "vocabulary reads text that way"
            )
        opts.prepare[name] = base_value
    opts.model.update({k: getattr(base.model_config, k) for k in _SHAPE})
    opts.prepare.update(vocab_base=list(base.vocab.chars), vocab_grow=not keep_vocab)
    chosen = opts.explicit | set(preset(opts.preset) if opts.preset else ())  # a preset's lr is a choice too
    if "lr" not in chosen:
        opts.train["lr"] = min(base.train_config.lr, FINE_TUNE_MAX_LR)
    if "warmup_steps" not in chosen:
        opts.train["warmup_steps"] = min(FINE_TUNE_WARMUP, base.train_config.warmup_steps)
    info = run_info(base.dir)
    step = info["best_step"] if checkpoint == "best" and info["best_step"] is not None else info["steps"]
    return {
        "from": str(base.dir.resolve()),
        "checkpoint": checkpoint,
        "weights": str(weights),
        "corpus_fingerprint": base.config["corpus"]["fingerprint"],
        "step": step,
        "best_val_loss": info["best_val_loss"],
        "vocab_size": len(base.vocab),
        "keep_vocab": keep_vocab,
    }


def fine_tune_message(init: dict, corpus_meta: dict) -> str:
    """What a fine-tune starts from, and what became of the characters its base lacks."""
    text = f"fine-tuning from {init['from']} ({init['checkpoint']} weights, step {init['step']})"
    added, unknown = corpus_meta.get("added_chars", 0), corpus_meta.get("unknown_chars", 0)
    if init["keep_vocab"]:
        return text + (
            f"; {unknown:,} characters of the corpus are not in its vocabulary and read as <unk> (--keep-vocab)"
            if unknown
            else "; every character of the corpus is in its vocabulary"
        )
    text += f"; {added} new characters added to its vocabulary of {init['vocab_size']}" if added else ""
    return text + (
        f"; {unknown:,} characters read as <unk> (rarer than --min-char-count in training, or only "
        "in validation or test)"
        if unknown
        else ""
    )
