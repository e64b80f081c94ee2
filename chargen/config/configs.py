"""Every user-facing option, defined once: the config dataclasses, presets, and how option layers combine.

Each option is a field declared with ``options.option`` (flag, help, checks,
whether it may change on resume); the ``prepare``, ``train`` and ``sample``
flags, TOML keys and presets are all checked against these fields.

* ``PrepareOptions``: what changes a corpus's ids (and its cache fingerprint);
* ``ModelConfig``: the shape of a CharRNN;
* ``TrainConfig``: how to train;
* ``SampleOptions``: how to sample.

Options are layered, each layer overriding the one before: the dataclass
defaults, a named preset (``--preset``), a TOML file (``--config``; its keys
are the flag names, with dashes or underscores), then the flags or keyword
options themselves.

This module is light (no torch, numpy or tokenizers), so that building the
command line costs nothing.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, fields

from ..errors import ChargenError
from .options import check_fields, keys, load_toml, option, parse_duration, parse_int_list, resumable, specs

CELLS = ("lstm", "gru")
SOFTMAXES = ("full", "adaptive", "auto")
# --softmax auto picks the adaptive softmax from this many characters on. Measured (scripts/bench_softmax.py,
# the cpu preset for 3 minutes on Chinese and Japanese manual pages, the alphabet cut with --min-char-count):
# best validation loss full / adaptive 2.139 / 2.177 nats at 175 characters, 2.679 / 2.425 at 360,
# 4.742 / 2.673 at 1,048, 5.600 / 3.148 at 3,995. Steps are as fast either way below ~1,000 characters;
# the adaptive softmax wins above a few hundred because a full one learns its many rare rows slowly.
ADAPTIVE_FROM = 300
# Each cluster of the adaptive softmax after the first projects the hidden state to DIV times fewer
# dimensions than the one before (PyTorch's default div_value).
ADAPTIVE_DIV = 4
NORMALIZE_CHOICES = ("none", "nfc", "nfkc")
ERRORS_CHOICES = ("strict", "replace", "ignore")
LAYOUTS = ("stateful", "random")
SCHEDULES = ("cosine", "constant")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEFAULT_EPOCHS = 10  # the budget when none is given
# Headings of the flags in ``chargen train --help``.
OPTIMIZATION, BUDGET = "optimization", f"budget (whichever comes first; default --epochs {DEFAULT_EPOCHS})"
EVALUATION, DEVICE = "evaluation and checkpoints", "device"


@dataclass(frozen=True)
class PrepareOptions:
    """Every option that changes the ids, hence part of the fingerprint."""

    val_fraction: float | None = option(
        None, "share of the text, after the training part, that validates (default: the corpus's "
              "registry split, else 0.1)", minimum=0.0, below=1.0, metavar="F", group="corpus")
    test_fraction: float | None = option(None, "share at the very end held out for testing (default 0)",
                                         minimum=0.0, below=1.0, metavar="F", group="corpus")
    normalize: str = option("none", "Unicode normalization applied before anything else",
                            choices=NORMALIZE_CHOICES, group="corpus")
    lowercase: bool = option(False, "lowercase the text", group="corpus")
    min_char_count: int = option(1, "characters seen fewer than N times in training become the unknown token",
                                 minimum=1, metavar="N", group="corpus")
    encoding: str = option("utf-8", "text encoding of the files", group="corpus")
    errors: str = option("strict", "what to do with undecodable bytes; strict stops at the first, naming its offset",
                         choices=ERRORS_CHOICES, group="corpus")
    text_column: str = option("text", "column holding the text, for hf: sources", metavar="COL", group="corpus")
    # Not flags: set by --init-from. The base run's tokens in id order, which keep their ids; the
    # corpus's other characters are added after them, or, with ``vocab_grow`` off, become the unknown token.
    vocab_base: list[str] | None = None
    vocab_grow: bool = True

    def __post_init__(self):
        check_fields(self)
        if self.vocab_base is not None and not (isinstance(self.vocab_base, list) and self.vocab_base and
                                                all(isinstance(t, str) and t for t in self.vocab_base)):
            raise ChargenError("vocab_base must be a non-empty list of tokens (a base run's vocabulary)")
        if (self.val_fraction or 0) + (self.test_fraction or 0) >= 1.0:
            raise ChargenError("--val-fraction plus --test-fraction must be below 1, leaving text to train on")
        try:
            "\n".encode(self.encoding)  # also refuses codecs that are not text encodings (rot13, hex)
        except LookupError as e:
            what = "is not a text encoding" if "text encoding" in str(e) else "is an unknown encoding"
            raise ChargenError(f"{self.encoding!r} {what}; use a Python codec name such as utf-8 "
                               "or latin-1") from None


@dataclass
class ModelConfig:
    """Shape of a CharRNN; saved in the run's config.json."""

    vocab_size: int   # set from the corpus, not an option
    cell: str = option("lstm", "recurrent cell", choices=CELLS, group="model")
    num_layers: int = option(2, "stacked layers", flag="layers", minimum=1, metavar="L", group="model")
    hidden_size: int = option(256, "hidden size", flag="hidden", minimum=1, metavar="H", group="model")
    embedding_size: int | None = option(None, "embedding size (default: the hidden size)", flag="embedding",
                                        minimum=1, metavar="E", group="model")
    dropout: float = option(0.0, "dropout between layers and before the head", minimum=0.0, below=1.0,
                            metavar="P", group="model")
    input_dropout: float = option(0.0, "locked dropout on the embedding output: one mask per sequence, the same "
                                       "at every step (AWD-LSTM's variational dropout)", minimum=0.0, below=1.0,
                                  metavar="P", group="model")
    output_dropout: float = option(0.0, "locked dropout on the last layer's output, before the head (one mask per "
                                        "sequence, as --input-dropout)", minimum=0.0, below=1.0, metavar="P",
                                   group="model")
    tie_weights: bool = option(False, "tie the embedding and head weights", flag="tie", group="model")
    softmax: str = option("full", "output layer: full softmax, adaptive (frequent characters cost little, "
                                  f"rare ones go to smaller clusters), or auto: adaptive from {ADAPTIVE_FROM:,} "
                                  "characters on (default full)", choices=SOFTMAXES, group="model")
    cutoffs: list[int] | None = option(None, "where the adaptive softmax's clusters start, in characters by "
                                             "frequency: 300,1000 puts the 300 likeliest in the first cluster "
                                             "(default: from the training split's character counts)",
                                       minimum=1, maximum=0x10FFFF, metavar="N,N", parse=parse_int_list,
                                       group="model")

    def __post_init__(self):
        if not isinstance(self.vocab_size, int) or isinstance(self.vocab_size, bool) or self.vocab_size < 1:
            raise ChargenError(f"vocab size must be a whole number of at least 1, got {self.vocab_size!r}")
        if isinstance(self.cutoffs, tuple):
            self.cutoffs = list(self.cutoffs)
        check_fields(self)
        if self.embedding_size is None:
            self.embedding_size = self.hidden_size
        if self.tie_weights and self.embedding_size != self.hidden_size:
            raise ChargenError("tied weights need the embedding size to equal the hidden size")
        if self.tie_weights and self.softmax == "adaptive":
            raise ChargenError("--tie needs --softmax full: the adaptive softmax has no output matrix to tie")
        if self.softmax == "adaptive" and self.hidden_size < ADAPTIVE_DIV:
            raise ChargenError(f"the adaptive softmax needs --hidden {ADAPTIVE_DIV} or more (its clusters are "
                               f"{ADAPTIVE_DIV}x narrower than the hidden state); use --softmax full or a larger "
                               "--hidden")
        if self.cutoffs is not None:
            if self.softmax != "adaptive":
                raise ChargenError("--cutoffs sets the clusters of the adaptive softmax; pass --softmax adaptive "
                                   "with it")
            if self.cutoffs[-1] >= self.vocab_size:
                raise ChargenError(f"--cutoffs {','.join(map(str, self.cutoffs))} must stay below the "
                                   f"vocabulary's {self.vocab_size:,} characters; give smaller cutoffs, or "
                                   "leave --cutoffs out to take them from the character counts")
            if self.hidden_size // ADAPTIVE_DIV ** len(self.cutoffs) < 1:
                raise ChargenError(f"--cutoffs {','.join(map(str, self.cutoffs))} makes {len(self.cutoffs)} "
                                   f"clusters after the first, each {ADAPTIVE_DIV}x narrower: too many for "
                                   f"--hidden {self.hidden_size}; give fewer cutoffs")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def adaptive(self) -> bool:
        """Whether the output layer is the adaptive softmax (a saved run's softmax is never auto)."""
        return self.softmax == "adaptive"

    @property
    def num_tensors(self) -> int:
        """How many tensors the weights file holds (tied weights are stored once)."""
        return 1 + 4 * self.num_layers + len(self._head_shapes())

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """The stored tensors' names and shapes, as CharRNN names them (nn.LSTM/nn.GRU layout; the
        adaptive softmax as nn.AdaptiveLogSoftmaxWithLoss, and ``head.rank``, each id's place in the
        frequency order its clusters follow)."""
        E, H, G = self.embedding_size, self.hidden_size, 4 if self.cell == "lstm" else 3
        shapes = {"embedding.weight": (self.vocab_size, E), **self._head_shapes()}
        for k in range(self.num_layers):
            shapes.update({f"rnn.weight_ih_l{k}": (G * H, E if k == 0 else H), f"rnn.weight_hh_l{k}": (G * H, H),
                           f"rnn.bias_ih_l{k}": (G * H,), f"rnn.bias_hh_l{k}": (G * H,)})
        return shapes

    def _head_shapes(self) -> dict[str, tuple[int, ...]]:
        """The output layer's stored tensors and their shapes."""
        V, H = self.vocab_size, self.hidden_size
        if not self.adaptive:
            return {"head.bias": (V,), **({} if self.tie_weights else {"head.weight": (V, H)})}
        cuts = [*self.cutoffs, V]
        first = cuts[0] + len(cuts) - 1          # the shortlist, and one entry per tail cluster
        shapes = {"head.head.weight": (first, H), "head.head.bias": (first,), "head.rank": (V,)}
        for i in range(len(cuts) - 1):
            width = H // ADAPTIVE_DIV ** (i + 1)
            shapes.update({f"head.tail.{i}.0.weight": (width, H),                  # projection, then cluster
                           f"head.tail.{i}.1.weight": (cuts[i + 1] - cuts[i], width)})
        return shapes

    @property
    def num_parameters(self) -> int:
        """The parameter count, computed without building anything (closed form, any size)."""
        V, E, H, L = self.vocab_size, self.embedding_size, self.hidden_size, self.num_layers
        G = 4 if self.cell == "lstm" else 3
        rnn = G * H * (E + H + 2) + (L - 1) * G * H * (2 * H + 2)
        head = sum(math.prod(shape) for name, shape in self._head_shapes().items() if name != "head.rank")
        return V * E + rnn + head

    def resolve_softmax(self, counts) -> "ModelConfig":
        """This config with ``auto`` decided and the adaptive softmax's cutoffs set, for a corpus whose
        training split holds ``counts[i]`` of character ``i``."""
        from dataclasses import replace
        softmax = self.softmax
        if softmax == "auto":
            softmax = "adaptive" if (self.vocab_size >= ADAPTIVE_FROM and not self.tie_weights
                                     and self.hidden_size >= ADAPTIVE_DIV) else "full"
        if softmax == "full":
            return replace(self, softmax="full", cutoffs=None)
        if self.vocab_size < 2:
            raise ChargenError("the adaptive softmax needs at least 2 characters and this corpus has 1; "
                               "use --softmax full")
        return replace(self, softmax="adaptive", cutoffs=self.cutoffs or default_cutoffs(counts, self.hidden_size))


# The default clusters of the adaptive softmax: the first holds the likeliest characters that make up
# COVER[0] of the training text, the next those up to COVER[1], the last the rest. At least MIN_SHORTLIST
# characters go in the first. Measured at 3,989 characters (3 minutes, as above): 90%/99% (cutoffs
# 344,1072) reached 2.777 nats, 80%/95% (159,558) 2.837, 95%/99.5% (558,1319) 4.491.
COVER, MIN_SHORTLIST = (0.9, 0.99), 64


def default_cutoffs(counts, hidden_size: int, cover: tuple[float, ...] = COVER) -> list[int]:
    """Cutoffs for a vocabulary with these training counts: each cluster ends where the likeliest
    characters reach the next share of the text in ``cover``; increasing, each below the vocabulary's
    size, and no more than the hidden size can narrow to."""
    counts = sorted((int(c) for c in counts), reverse=True)
    V, total = len(counts), sum(counts)
    cuts, seen, i = [], 0, 0
    for share in cover:
        while i < V and (seen < share * total or i < MIN_SHORTLIST):
            seen += counts[i]
            i += 1
        if i < V and (not cuts or i > cuts[-1]):
            cuts.append(i)
    while cuts and hidden_size // ADAPTIVE_DIV ** len(cuts) < 1:
        cuts.pop()
    return cuts or [max(1, V - 1)]


# Each evaluation scores at most this many validation characters (a fixed sample; "all" for every one).
# 128 Ki is the whole validation split of tiny shakespeare (111,540), so the classic figure stays exact,
# and it costs about 3.4 s on 2 CPU cores with the cpu preset's model in fp32 (about 2 s under bf16),
# 2-5% of the training between two evaluations, whatever the corpus size.
EVAL_CHARS = 131072


def parse_eval_chars(text) -> int:
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
    bptt: int = option(128, "steps per batch; gradients stop after T", minimum=1, metavar="T",
                       group=OPTIMIZATION)
    lr: float = option(2e-3, "peak learning rate of AdamW", above=0.0, group=OPTIMIZATION)
    weight_decay: float = option(0.0, "AdamW weight decay", minimum=0.0, metavar="WD", group=OPTIMIZATION)
    clip: float = option(1.0, "clip the global gradient norm at C", above=0.0, metavar="C",
                         group=OPTIMIZATION)
    warmup_steps: int = option(100, "linear warmup steps", minimum=0, metavar="N", group=OPTIMIZATION)
    schedule: str = option("cosine", "learning-rate schedule", choices=SCHEDULES, group=OPTIMIZATION)
    decay_steps: int | None = option(None, "cosine length (default: the step or time budget the run is "
                                           "created with)", minimum=1, metavar="N", group=OPTIMIZATION)
    min_lr_ratio: float = option(0.1, "the cosine ends at lr times this", minimum=0.0, maximum=1.0,
                                 metavar="R", group=OPTIMIZATION)
    layout: str = option("stateful", "stateful streams with carried state, or random windows from the "
                                      "zero state", choices=LAYOUTS, group=OPTIMIZATION)
    seed: int = option(1337, "random seed", minimum=0, maximum=2**63 - 1, metavar="S", group=OPTIMIZATION)
    max_steps: int | None = option(None, "stop after N steps", minimum=1, resumable=True, metavar="N",
                                   group=BUDGET)
    epochs: float | None = option(None, "stop after N passes over the training split", above=0.0, maximum=1e9,
                                  resumable=True, metavar="N", group=BUDGET)
    max_time: float | None = option(None, "wall-clock budget: 90s, 5m, 1h", above=0.0, resumable=True,
                                    metavar="DURATION", parse=parse_duration, group=BUDGET)
    eval_every: int = option(500, "validate every N steps", minimum=1, resumable=True, metavar="N",
                             group=EVALUATION)
    eval_batch_size: int = option(32, "validation segments read side by side", minimum=1, resumable=True,
                                  metavar="N", group=EVALUATION)
    eval_chars: int = option(EVAL_CHARS, "characters each evaluation scores: a fixed sample spread over the "
                                          "validation split, or all (0) of it (default 131072)",
                             minimum=0, metavar="N|all", parse=parse_eval_chars, group=EVALUATION)
    patience: int | None = option(None, "stop after N evaluations without improvement", minimum=1,
                                  resumable=True, metavar="N", group=EVALUATION)
    checkpoint_every: int = option(1000, "write last/ every N steps", minimum=1, resumable=True,
                                   metavar="N", group=EVALUATION)
    log_every: int = option(50, "metrics line every N steps", minimum=1, resumable=True, metavar="N",
                            group=EVALUATION)
    preview_chars: int = option(200, "sample length shown at each evaluation", minimum=0, resumable=True,
                                metavar="N", group=EVALUATION)
    max_bad_steps: int = option(5, "stop after N non-finite steps in a row", minimum=1, resumable=True,
                                metavar="N", group=EVALUATION)
    device: str = option("auto", "auto: CUDA when present", choices=DEVICES, resumable=True, group=DEVICE)
    precision: str = option("auto", "auto: bf16 (else fp16) on CUDA; on the CPU, bf16 for a GRU where the CPU "
                                    "has native bf16, else fp32", choices=PRECISIONS, resumable=True, group=DEVICE)

    def __post_init__(self):
        if isinstance(self.eval_chars, str):
            try:
                self.eval_chars = parse_eval_chars(self.eval_chars)
            except ChargenError as e:
                raise ChargenError(f"--eval-chars {e}") from None
        check_fields(self)

    def to_dict(self) -> dict:
        return asdict(self)


OPTION_CLASSES = (ModelConfig, TrainConfig, PrepareOptions)  # what chargen train takes
# Options that may change when a run is resumed; everything else is fixed by the run.
RESUMABLE = resumable(TrainConfig)

PRESETS: dict[str, dict] = {
    # The best model for tiny shakespeare in about five minutes on a laptop CPU (2 cores). A GRU
    # beat every LSTM tried at equal time (val 1.59 against 1.70-1.75 after 2 minutes). Many short rows
    # (batch 128 x bptt 50): a step's cost is mostly per time step, not per row, so the same 6,400
    # characters per step go about 30% faster than as batch 64 x bptt 100. A high peak learning rate with
    # AdamW weight decay 0.3 against the overfitting of several epochs (1.6e-2 was past the edge); the
    # cosine to 0; bf16 where the CPU has it (--precision auto). Measured in
    # docs/measurements/time_to_quality-2026-12-0[234].md:
    # 1.4167 nats/char over 3 seeds in 5 minutes (1.4159-1.4178, about 1,300 steps) against 1.4587 for the
    # preset before, on the same machine and day.
    # The preset of 2026-12-03 is --batch-size 64 --bptt 100 --lr 6e-3 --weight-decay 0.2; the one before
    # it --batch-size 32 --bptt 100 --lr 4e-3 --weight-decay 0 --min-lr-ratio 0.1 --precision fp32.
    "cpu": dict(cell="gru", num_layers=2, hidden_size=320, embedding_size=64, dropout=0.0, batch_size=128,
                bptt=50, lr=1.3e-2, warmup_steps=50, eval_every=250, weight_decay=0.3, min_lr_ratio=0.0),
    # A single-GPU model for tiny shakespeare: wide LSTM, dropout against overfitting.
    "gpu": dict(cell="lstm", num_layers=3, hidden_size=1024, dropout=0.3, batch_size=128, bptt=256,
                lr=2e-3, warmup_steps=200, eval_every=250, weight_decay=0.0),
    # Seconds on any machine; for smoke tests and trying the pipeline.
    "tiny": dict(cell="lstm", num_layers=1, hidden_size=64, batch_size=16, bptt=32, lr=3e-3,
                 warmup_steps=10, eval_every=50, preview_chars=80),
}


def preset(name: str) -> dict:
    if not isinstance(name, str) or name not in PRESETS:
        raise ChargenError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])


@dataclass
class Options:
    """The layered options of a train call, split by the config they belong to."""

    source: str | None
    model: dict
    train: dict
    prepare: dict
    explicit: set    # the keys the user gave (flags, keyword options, TOML), not defaults or a preset
    preset: str | None = None


def layer_options(source, config_file, preset_name, options: dict) -> Options:
    """Merge preset < TOML file < options (user spellings allowed), and split them by config."""
    file_opts = load_toml(config_file, OPTION_CLASSES, extra=("source", "preset")) if config_file else {}
    preset_name = preset_name or file_opts.get("preset")
    file_source = file_opts.pop("source", None)
    file_opts.pop("preset", None)
    for where, value in (("SOURCE", source), (f"source in {config_file}", file_source)):
        if value is not None and (not isinstance(value, (str, os.PathLike)) or str(value) == ""):
            raise ChargenError(f"{where} must be a path, glob or corpus name, got {value!r}; leave it out for "
                               "the default corpus (pystdlib)")
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

    def part(cls) -> dict:
        return {k: v for k, v in merged.items() if k in specs(cls)}

    return Options(source if source is not None else file_source, part(ModelConfig), part(TrainConfig),
                   part(PrepareOptions), set(file_opts) | set(given), preset_name)


DEFAULT_TEMPERATURE = 0.8  # the one default: the CLI, the Python API and training previews


@dataclass
class SampleOptions:
    """How to sample: one validated set of options for ``Sampler.generate``/``stream`` and the CLI."""

    length: int = option(500, "characters to generate", minimum=0, metavar="N")
    temperature: float = option(DEFAULT_TEMPERATURE, "softmax temperature; 0 is greedy", minimum=0.0,
                                metavar="T")
    top_k: int | None = option(None, "sample from the K likeliest characters", minimum=1, metavar="K")
    top_p: float | None = option(None, "sample from the smallest set whose probability reaches P",
                                 above=0.0, maximum=1.0, metavar="P")
    stop: tuple[str, ...] = option((), "stop when TEXT appears (not printed; repeatable; \\n escapes "
                                       "allowed)", metavar="TEXT")
    n: int = option(1, "samples, decoded together in one batch", minimum=1, maximum=1 << 16, metavar="N")
    seed: int | None = option(None, "same seed, same text (default: random)", minimum=0, maximum=2**63 - 1)
    unknown: str = option("error", "prompt characters outside the vocabulary: an error, or the unknown "
                                   "token", choices=("error", "unk"))

    def __post_init__(self):
        if isinstance(self.stop, str) or self.stop is None:
            self.stop = () if self.stop is None else (self.stop,)
        elif isinstance(self.stop, (list, tuple)):
            self.stop = tuple(self.stop)
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ChargenError("stop strings must be non-empty text")
        check_fields(self, by="name")
