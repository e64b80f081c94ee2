"""``TrainConfig``: how to train, with the budget's default and the parsing of ``--eval-chars``."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from ..errors import ChargenError
from .options import check_fields, option, parse_duration

LAYOUTS = ("stateful", "random")
SCHEDULES = ("cosine", "linear", "constant")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEFAULT_EPOCHS = 10  # the budget when none is given
# Headings of the flags in ``chargen train --help``.
OPTIMIZATION, BUDGET = "optimization", f"budget (whichever comes first; default --epochs {DEFAULT_EPOCHS})"
EVALUATION, DEVICE = "evaluation and checkpoints", "device"

# Each evaluation scores at most this many validation characters (a fixed sample; "all" for every one).
# 128 Ki is the whole validation split of tiny shakespeare (111,540), so the classic figure stays exact,
# and it costs about 3.4 s on 2 CPU cores with the cpu preset's model in fp32 (about 2 s under bf16),
# 2-5% of the training between two evaluations, whatever the corpus size.
EVAL_CHARS = 131072


def parse_eval_chars(text: str | int) -> int:
    """``"all"`` -> 0 (every character), else a whole number (digits, ``_`` between them allowed)."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    word = str(text).strip()
    if word.lower() == "all":
        return 0
    if not re.fullmatch(r"\d+(_\d+)*", word):
        raise ChargenError(f"must be a number of characters or all, got {text!r}")
    return int(word.replace("_", ""))


@dataclass
class TrainConfig:
    """How to train; saved in the run's config.json. ``resumable`` options may change on --resume."""

    batch_size: int = option(64, "streams per batch", minimum=1, metavar="B", group=OPTIMIZATION)
    bptt: int = option(128, "steps per batch; gradients stop after T", minimum=1, metavar="T", group=OPTIMIZATION)
    lr: float = option(2e-3, "peak learning rate of AdamW", above=0.0, maximum=100.0, group=OPTIMIZATION)
    weight_decay: float = option(0.0, "AdamW weight decay", minimum=0.0, metavar="WD", group=OPTIMIZATION)
    clip: float = option(1.0, "clip the global gradient norm at C", above=0.0, metavar="C", group=OPTIMIZATION)
    warmup_steps: int = option(100, "linear warmup steps", minimum=0, metavar="N", group=OPTIMIZATION)
    schedule: str = option("cosine", "learning-rate schedule", choices=SCHEDULES, group=OPTIMIZATION)
    decay_steps: int | None = option(
        None,
        "the decay's length (default: the step or time budget the run is created with)",
        minimum=1,
        metavar="N",
        group=OPTIMIZATION,
    )
    min_lr_ratio: float = option(
        0.1, "the decay ends at lr times this", minimum=0.0, maximum=1.0, metavar="R", group=OPTIMIZATION
    )
    layout: str = option(
        "stateful",
        "stateful streams with carried state, or random windows from the zero state",
        choices=LAYOUTS,
        group=OPTIMIZATION,
    )
    seed: int = option(1337, "random seed", minimum=0, maximum=2**63 - 1, metavar="S", group=OPTIMIZATION)
    max_steps: int | None = option(None, "stop after N steps", minimum=1, resumable=True, metavar="N", group=BUDGET)
    epochs: float | None = option(
        None,
        "stop after N passes over the training split",
        above=0.0,
        maximum=1e9,
        resumable=True,
        metavar="N",
        group=BUDGET,
    )
    max_time: float | None = option(
        None,
        "wall-clock budget: 90s, 5m, 1h",
        above=0.0,
        resumable=True,
        metavar="DURATION",
        parse=parse_duration,
        group=BUDGET,
    )
    eval_every: int = option(500, "validate every N steps", minimum=1, resumable=True, metavar="N", group=EVALUATION)
    eval_batch_size: int = option(
        32, "validation segments read side by side", minimum=1, resumable=True, metavar="N", group=EVALUATION
    )
    eval_chars: int = option(
        EVAL_CHARS,
        "characters each evaluation scores: a fixed sample spread over the "
        "validation split, or all (0) of it (default 131072)",
        minimum=0,
        metavar="N|all",
        parse=parse_eval_chars,
        group=EVALUATION,
    )
    patience: int | None = option(
        None, "stop after N evaluations without improvement", minimum=1, resumable=True, metavar="N", group=EVALUATION
    )
    checkpoint_every: int = option(
        1000, "write last/ every N steps", minimum=1, resumable=True, metavar="N", group=EVALUATION
    )
    log_every: int = option(50, "metrics line every N steps", minimum=1, resumable=True, metavar="N", group=EVALUATION)
    preview_chars: int = option(
        200, "sample length shown at each evaluation", minimum=0, resumable=True, metavar="N", group=EVALUATION
    )
    max_bad_steps: int = option(
        5, "stop after N non-finite steps in a row", minimum=1, resumable=True, metavar="N", group=EVALUATION
    )
    device: str = option("auto", "auto: CUDA when present", choices=DEVICES, resumable=True, group=DEVICE)
    precision: str = option(
        "auto",
        "auto: bf16 (else fp16) on CUDA; on the CPU, bf16 for a GRU, minGRU or minLSTM where the CPU has "
        "native bf16, else fp32",
        choices=PRECISIONS,
        resumable=True,
        group=DEVICE,
    )
    tf32: bool = option(
        True,
        "TF32 tensor cores for float32 products on CUDA (cuDNN RNNs, matmuls), on by default; --no-tf32: full float32",
        resumable=True,
        group=DEVICE,
    )

    def __post_init__(self) -> None:
        if isinstance(self.eval_chars, str):
            try:
                self.eval_chars = parse_eval_chars(self.eval_chars)
            except ChargenError as e:
                raise ChargenError(f"--eval-chars {e}") from None
        check_fields(self)

    def to_dict(self) -> dict:
        return asdict(self)
