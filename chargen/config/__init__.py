"""Every user-facing option, defined once (the lowest wing above the leaves).

``options`` turns a dataclass field into a flag, a TOML key and a check; the
``prepare``, ``train`` and ``sample`` flags, TOML keys and presets are all
checked against these fields. One module per config dataclass:

* ``prepare``: ``PrepareOptions``, what changes a corpus's ids (and its cache fingerprint);
* ``model``: ``ModelConfig``, the shape of a CharRNN;
* ``train``: ``TrainConfig``, how to train;
* ``sample``: ``SampleOptions``, how to sample;

and ``presets``: the named presets and how option layers combine.

The wing is light (no torch, numpy or tokenizers), so the command line costs
nothing to build, and its names are re-exported here: ``from chargen.config
import TrainConfig``.
"""

from .model import (
    ADAPTIVE_DIV,
    ADAPTIVE_FROM,
    CELL_NAMES,
    CELLS,
    COVER,
    GATES,
    MIN_CELLS,
    MIN_SHORTLIST,
    SOFTMAXES,
    ModelConfig,
    default_cutoffs,
)
from .prepare import ERRORS_CHOICES, NORMALIZE_CHOICES, PrepareOptions
from .presets import OPTION_CLASSES, PRESETS, RESUMABLE, Options, layer_options, preset
from .sample import DEFAULT_TEMPERATURE, SampleOptions
from .train import (
    BUDGET,
    DEFAULT_EPOCHS,
    DEVICE,
    DEVICES,
    EVAL_CHARS,
    EVALUATION,
    LAYOUTS,
    OPTIMIZATION,
    PRECISIONS,
    SCHEDULES,
    TrainConfig,
    parse_eval_chars,
)

__all__ = [
    "ADAPTIVE_DIV",
    "ADAPTIVE_FROM",
    "BUDGET",
    "CELLS",
    "CELL_NAMES",
    "COVER",
    "DEFAULT_EPOCHS",
    "DEFAULT_TEMPERATURE",
    "DEVICE",
    "DEVICES",
    "ERRORS_CHOICES",
    "EVALUATION",
    "EVAL_CHARS",
    "GATES",
    "LAYOUTS",
    "MIN_CELLS",
    "MIN_SHORTLIST",
    "NORMALIZE_CHOICES",
    "OPTIMIZATION",
    "OPTION_CLASSES",
    "PRECISIONS",
    "PRESETS",
    "RESUMABLE",
    "SCHEDULES",
    "SOFTMAXES",
    "ModelConfig",
    "Options",
    "PrepareOptions",
    "SampleOptions",
    "TrainConfig",
    "default_cutoffs",
    "layer_options",
    "parse_eval_chars",
    "preset",
]
