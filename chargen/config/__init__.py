"""Every user-facing option, defined once (the lowest wing above the leaves).

``options`` turns a dataclass field into a flag, a TOML key and a check; the
config dataclasses, presets and option layering are built on it. The wing is
light (no torch, numpy or tokenizers), so the command line costs nothing to
build, and its names are re-exported here: ``from chargen.config import
TrainConfig``.
"""

from .configs import (ADAPTIVE_DIV, ADAPTIVE_FROM, BUDGET, CELLS, COVER, DEFAULT_EPOCHS, DEFAULT_TEMPERATURE,
                      DEVICE, DEVICES, ERRORS_CHOICES, EVAL_CHARS, EVALUATION, LAYOUTS, MIN_SHORTLIST,
                      NORMALIZE_CHOICES, OPTIMIZATION, OPTION_CLASSES, PRECISIONS, PRESETS, RESUMABLE, SCHEDULES,
                      SOFTMAXES, ModelConfig, Options, PrepareOptions, SampleOptions, TrainConfig,
                      default_cutoffs, layer_options, parse_eval_chars, preset)

__all__ = ["ADAPTIVE_DIV", "ADAPTIVE_FROM", "BUDGET", "CELLS", "COVER", "DEFAULT_EPOCHS", "DEFAULT_TEMPERATURE",
           "DEVICE", "DEVICES", "ERRORS_CHOICES", "EVAL_CHARS", "EVALUATION", "LAYOUTS", "MIN_SHORTLIST",
           "NORMALIZE_CHOICES", "OPTIMIZATION", "OPTION_CLASSES", "PRECISIONS", "PRESETS", "RESUMABLE", "SCHEDULES",
           "SOFTMAXES", "ModelConfig", "Options", "PrepareOptions", "SampleOptions", "TrainConfig",
           "default_cutoffs", "layer_options", "parse_eval_chars", "preset"]
