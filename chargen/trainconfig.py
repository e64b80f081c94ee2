"""Training options: the TrainConfig dataclass, presets, TOML files, devices.

Options are layered, each layer overriding the one before: the dataclass
defaults, a named preset (``--preset``), a TOML file (``--config``; its keys
are the flag names, with dashes or underscores), then the flags themselves.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields

import torch

from .errors import ChargenError
from .model import ModelConfig

LAYOUTS = ("stateful", "random")
SCHEDULES = ("cosine", "constant")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    """How to train; saved in the run's config.json."""

    batch_size: int = 64
    bptt: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    clip: float = 1.0
    warmup_steps: int = 100
    schedule: str = "cosine"
    decay_steps: int | None = None   # None: the step or time budget the run was created with
    min_lr_ratio: float = 0.1        # cosine ends at lr * min_lr_ratio
    layout: str = "stateful"
    max_steps: int | None = None
    epochs: float | None = None
    max_time: float | None = None    # seconds
    eval_every: int = 500
    eval_batch_size: int = 32
    checkpoint_every: int = 1000
    log_every: int = 50
    patience: int | None = None
    max_bad_steps: int = 5
    preview_chars: int = 200
    device: str = "auto"
    precision: str = "auto"
    seed: int = 1337

    def __post_init__(self):
        positive = ("batch_size", "bptt", "eval_every", "eval_batch_size", "checkpoint_every",
                    "log_every", "max_bad_steps")
        for name in positive:
            _check(name, getattr(self, name), minimum=1, integer=True)
        for name in ("max_steps", "patience", "decay_steps"):
            if getattr(self, name) is not None:
                _check(name, getattr(self, name), minimum=1, integer=True)
        _check("warmup_steps", self.warmup_steps, minimum=0, integer=True)
        _check("preview_chars", self.preview_chars, minimum=0, integer=True)
        for name in ("lr", "clip"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ChargenError(f"--{_flag(name)} must be a positive number, got {v!r}")
        for name in ("epochs", "max_time"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0):
                raise ChargenError(f"--{_flag(name)} must be positive, got {v!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ChargenError(f"--weight-decay must be 0 or more, got {self.weight_decay!r}")
        if not (0.0 <= self.min_lr_ratio <= 1.0):
            raise ChargenError(f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        for name, choices in (("layout", LAYOUTS), ("schedule", SCHEDULES), ("device", DEVICES),
                              ("precision", PRECISIONS)):
            if getattr(self, name) not in choices:
                raise ChargenError(f"unknown --{name} {getattr(self, name)!r}; choose one of {', '.join(choices)}")

    def to_dict(self) -> dict:
        return asdict(self)


# Options that may change when a run is resumed; everything else is fixed by the run.
RESUMABLE = {"max_steps", "epochs", "max_time", "eval_every", "eval_batch_size", "checkpoint_every",
             "log_every", "patience", "max_bad_steps", "preview_chars", "device", "precision"}

PRESETS: dict[str, dict] = {
    # The best model for tiny shakespeare in about five minutes on a laptop CPU (2 cores). A GRU
    # beat every LSTM tried at equal time (val 1.59 against 1.70-1.75 after 2 minutes), and at this
    # budget more, smaller updates beat larger batches: see the README for the measurements.
    "cpu": dict(cell="gru", num_layers=2, hidden_size=320, embedding_size=64, dropout=0.0, batch_size=32,
                bptt=100, lr=4e-3, warmup_steps=50, eval_every=250, weight_decay=0.0),
    # A single-GPU model for tiny shakespeare: wide LSTM, dropout against overfitting.
    "gpu": dict(cell="lstm", num_layers=3, hidden_size=1024, dropout=0.3, batch_size=128, bptt=256,
                lr=2e-3, warmup_steps=200, eval_every=250, weight_decay=0.0),
    # Seconds on any machine; for smoke tests and trying the pipeline.
    "tiny": dict(cell="lstm", num_layers=1, hidden_size=64, batch_size=16, bptt=32, lr=3e-3,
                 warmup_steps=10, eval_every=50, preview_chars=80),
}


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _check(name, value, *, minimum, integer):
    if integer and (not isinstance(value, int) or isinstance(value, bool)):
        raise ChargenError(f"--{_flag(name)} must be a whole number, got {value!r}")
    if value < minimum:
        raise ChargenError(f"--{_flag(name)} must be at least {minimum}, got {value!r}")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?\s*$")


def parse_duration(text) -> float:
    """``"90"``, ``"90s"``, ``"5m"``, ``"1.5h"`` -> seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    m = _DURATION.match(str(text))
    if not m:
        raise ChargenError(f"--max-time takes a duration such as 90s, 5m or 1h, got {text!r}")
    unit = {"s": 1, "sec": 1, None: 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]
    return float(m.group(1)) * unit


MODEL_KEYS = {f.name for f in fields(ModelConfig)} - {"vocab_size"}
TRAIN_KEYS = {f.name for f in fields(TrainConfig)}
PREPARE_KEYS = {"val_fraction", "test_fraction", "normalize", "lowercase", "min_char_count",
                "encoding", "errors", "text_column"}
# Short names used by the command line and TOML files.
ALIASES = {"layers": "num_layers", "hidden": "hidden_size", "embedding": "embedding_size",
           "tie": "tie_weights"}


def canonical(key: str) -> str:
    key = key.replace("-", "_")
    return ALIASES.get(key, key)


def load_toml(path) -> dict:
    """Options from a TOML file whose keys are flag names; unknown keys are an error."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ChargenError(f"config file {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ChargenError(f"config file {path} is not valid TOML: {e}") from None
    out = {}
    for key, value in raw.items():
        name = canonical(key)
        if name not in MODEL_KEYS | TRAIN_KEYS | PREPARE_KEYS and name not in ("source", "preset"):
            raise ChargenError(f"config file {path}: unknown key {key!r}; keys are the flag names of chargen train")
        if name == "max_time":
            value = parse_duration(value)
        out[name] = value
    return out


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise ChargenError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU; an unavailable device is a ChargenError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ChargenError("--device cuda asked for, but this machine has no CUDA device (or torch was "
                           "built without CUDA); use --device cpu or auto")
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ChargenError("--device mps asked for, but MPS is not available here; use --device cpu or auto")
    if name not in DEVICES:
        raise ChargenError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto``: fp32 on the CPU, bf16 on CUDA where supported (else fp16 with a grad scaler)."""
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ChargenError("--precision fp16 needs a CUDA device; use fp32 or bf16 here")
    return name
