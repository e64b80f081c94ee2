"""Named presets, and how option layers combine into the configs of a train call.

Options are layered, each layer overriding the one before: the dataclass
defaults, a named preset (``--preset``), a TOML file (``--config``; its keys
are the flag names, with dashes or underscores), then the flags or keyword
options themselves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ChargenError
from .model import ModelConfig
from .options import keys, load_toml, parse_duration, resumable, specs
from .prepare import PrepareOptions
from .train import TrainConfig

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

OPTION_CLASSES = (ModelConfig, TrainConfig, PrepareOptions)  # what chargen train takes
# Options that may change when a run is resumed; everything else is fixed by the run.
RESUMABLE = resumable(TrainConfig)

PRESETS: dict[str, dict] = {
    # The best model for tiny shakespeare in about five minutes on a laptop CPU (2 cores). A GRU
    # beat every LSTM tried at equal time (val 1.59 against 1.70-1.75 after 2 minutes), and the Elman,
    # minGRU and minLSTM cells too (docs/measurements/cells-2026-12-07.txt). Many short rows
    # (batch 128 x bptt 50): a step's cost is mostly per time step, not per row, so the same 6,400
    # characters per step go about 30% faster than as batch 64 x bptt 100. A high peak learning rate with
    # AdamW weight decay 0.45 against the overfitting of several epochs (lr 1.6e-2 was past the edge); the
    # cosine to 0; bf16 where the CPU has it (--precision auto). Measured in
    # docs/measurements/time_to_quality-2026-12-0[2347].md: 1.4114 nats/char over 3 seeds in 5 minutes on
    # 2026-12-07 (1.4082-1.4144, about 1,290 steps; 1.4096 over 3 seeds earlier that day), against 1.4193
    # for weight decay 0.3 the same hour (1.4166 over 3 seeds on 2026-12-04).
    # The preset of 2026-12-04 is --weight-decay 0.3; the one of 2026-12-03 --batch-size 64 --bptt 100
    # --lr 6e-3 --weight-decay 0.2; the one before it --batch-size 32 --bptt 100 --lr 4e-3 --weight-decay 0
    # --min-lr-ratio 0.1 --precision fp32.
    "cpu": dict(
        cell="gru",
        num_layers=2,
        hidden_size=320,
        embedding_size=64,
        dropout=0.0,
        batch_size=128,
        bptt=50,
        lr=1.3e-2,
        warmup_steps=50,
        eval_every=250,
        weight_decay=0.45,
        min_lr_ratio=0.0,
    ),
    # One GPU, for the corpora people bring: a few MB of text (tiny shakespeare is 1.1M characters; a
    # novel or a code base, 1-20 MB). A character model overfits once its parameters outnumber its training
    # characters by much (char-rnn's rule: keep the two within an order of magnitude), so the preset is
    # a 3x512 LSTM, 6.4M parameters, not the 25M of a 3x1024 (sized for 25 MB and more: give --hidden
    # 1024 then). Against overfitting: dropout 0.3 between the layers and AdamW weight decay 0.1. Batches
    # of 64 x 256 characters (nanoGPT's shakespeare_char shape) keep a GPU's tensor cores busy while
    # tiny shakespeare still gives 61 steps an epoch; an evaluation every 250 steps (about 4 epochs there)
    # catches the best weights before overfitting sets in. Not yet measured on a GPU: scripts/gpu_check.sh.
    "gpu": dict(
        cell="lstm",
        num_layers=3,
        hidden_size=512,
        dropout=0.3,
        batch_size=64,
        bptt=256,
        lr=2e-3,
        warmup_steps=200,
        eval_every=250,
        weight_decay=0.1,
    ),
    # Seconds on any machine; for smoke tests and trying the pipeline.
    "tiny": dict(
        cell="lstm",
        num_layers=1,
        hidden_size=64,
        batch_size=16,
        bptt=32,
        lr=3e-3,
        warmup_steps=10,
        eval_every=50,
        preview_chars=80,
    ),
}


def preset(name: str) -> dict:
    """A copy of the named preset's options."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ChargenError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])


@dataclass
class Options:
    """The layered options of a train call, split by the config they belong to."""

    source: str | os.PathLike[str] | None
    model: dict
    train: dict
    prepare: dict
    explicit: set  # the keys the user gave (flags, keyword options, TOML), not defaults or a preset
    preset: str | None = None


def layer_options(
    source: str | os.PathLike[str] | None,
    config_file: str | os.PathLike[str] | None,
    preset_name: str | None,
    options: dict[str, Any],
) -> Options:
    """Merge preset < TOML file < options (user spellings allowed), and split them by config."""
    file_opts = load_toml(config_file, OPTION_CLASSES, extra=("source", "preset")) if config_file else {}
    preset_name = preset_name or file_opts.get("preset")
    file_source = file_opts.pop("source", None)
    file_opts.pop("preset", None)
    for where, value in (("SOURCE", source), (f"source in {config_file}", file_source)):
        if value is not None and (not isinstance(value, (str, os.PathLike)) or str(value) == ""):
            raise ChargenError(
                f"{where} must be a path, glob or corpus name, got {value!r}; leave it out for "
                "the default corpus (pystdlib)"
            )
    table = keys(*OPTION_CLASSES)
    given = {}
    for key, value in options.items():
        if value is None:
            continue
        name = table.get(key.replace("-", "_"))
        if name is None:
            raise ChargenError(f"unknown option {key!r}")
        given[name] = value
    if isinstance(given.get("max_time"), str):
        try:
            given["max_time"] = parse_duration(given["max_time"])
        except ChargenError as e:
            raise ChargenError(f"--max-time {e}") from None
    merged = {**(preset(preset_name) if preset_name else {}), **file_opts, **given}

    def part(cls: type[DataclassInstance]) -> dict[str, Any]:
        return {k: v for k, v in merged.items() if k in specs(cls)}

    return Options(
        source if source is not None else file_source,
        part(ModelConfig),
        part(TrainConfig),
        part(PrepareOptions),
        set(file_opts) | set(given),
        preset_name,
    )
