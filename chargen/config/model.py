"""``ModelConfig``: the shape of a CharRNN, its stored tensors, and the adaptive softmax's default cutoffs."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import ChargenError
from .options import check_fields, option, parse_int_list

CELLS = ("lstm", "gru", "rnn", "mingru", "minlstm")
# The gates of each cell, stacked in its weight matrices' rows: LSTM i, f, g, o; GRU r, z, n; the Elman RNN's
# one tanh of the input and the state (the plain recurrent cell the tutorials teach); minGRU z, c and minLSTM
# f, i, c (Feng et al., 2024), whose gates read the input only (model/minrnn.py).
GATES = {"lstm": 4, "gru": 3, "rnn": 1, "mingru": 2, "minlstm": 3}
MIN_CELLS = ("mingru", "minlstm")  # no weights on the state; a LayerNorm before each layer instead
CELL_NAMES = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN", "mingru": "minGRU", "minlstm": "minLSTM"}  # as written
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


@dataclass
class ModelConfig:
    """Shape of a CharRNN; saved in the run's config.json."""

    vocab_size: int  # set from the corpus, not an option
    cell: str = option(
        "lstm",
        "recurrent cell (rnn: Elman's, one tanh and no gates; mingru, minlstm: gates on the input only, "
        "trained over a window at once)",
        choices=CELLS,
        group="model",
    )
    num_layers: int = option(2, "stacked layers", flag="layers", minimum=1, metavar="L", group="model")
    hidden_size: int = option(256, "hidden size", flag="hidden", minimum=1, metavar="H", group="model")
    embedding_size: int | None = option(
        None, "embedding size (default: the hidden size)", flag="embedding", minimum=1, metavar="E", group="model"
    )
    dropout: float = option(
        0.0, "dropout between layers and before the head", minimum=0.0, below=1.0, metavar="P", group="model"
    )
    input_dropout: float = option(
        0.0,
        "locked dropout on the embedding output: one mask per sequence, the same "
        "at every step (AWD-LSTM's variational dropout)",
        minimum=0.0,
        below=1.0,
        metavar="P",
        group="model",
    )
    output_dropout: float = option(
        0.0,
        "locked dropout on the last layer's output, before the head (one mask per sequence, as --input-dropout)",
        minimum=0.0,
        below=1.0,
        metavar="P",
        group="model",
    )
    tie_weights: bool = option(False, "tie the embedding and head weights", flag="tie", group="model")
    softmax: str = option(
        "full",
        "output layer: full softmax, adaptive (frequent characters cost little, "
        f"rare ones go to smaller clusters), or auto: adaptive from {ADAPTIVE_FROM:,} "
        "characters on (default full)",
        choices=SOFTMAXES,
        group="model",
    )
    cutoffs: list[int] | None = option(
        None,
        "where the adaptive softmax's clusters start, in characters by "
        "frequency: 300,1000 puts the 300 likeliest in the first cluster "
        "(default: from the training split's character counts)",
        minimum=1,
        maximum=0x10FFFF,
        metavar="N,N",
        parse=parse_int_list,
        group="model",
    )

    def __post_init__(self) -> None:
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
            raise ChargenError(
                f"the adaptive softmax needs --hidden {ADAPTIVE_DIV} or more (its clusters are "
                f"{ADAPTIVE_DIV}x narrower than the hidden state); use --softmax full or a larger "
                "--hidden"
            )
        if self.cutoffs is not None:
            if self.softmax != "adaptive":
                raise ChargenError(
                    "--cutoffs sets the clusters of the adaptive softmax; pass --softmax adaptive with it"
                )
            if self.cutoffs[-1] >= self.vocab_size:
                raise ChargenError(
                    f"--cutoffs {','.join(map(str, self.cutoffs))} must stay below the "
                    f"vocabulary's {self.vocab_size:,} characters; give smaller cutoffs, or "
                    "leave --cutoffs out to take them from the character counts"
                )
            if self.hidden_size // ADAPTIVE_DIV ** len(self.cutoffs) < 1:
                raise ChargenError(
                    f"--cutoffs {','.join(map(str, self.cutoffs))} makes {len(self.cutoffs)} "
                    f"clusters after the first, each {ADAPTIVE_DIV}x narrower: too many for "
                    f"--hidden {self.hidden_size}; give fewer cutoffs"
                )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
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
        """The stored tensors' names and shapes, as CharRNN names them (nn.LSTM/nn.GRU layout; a min cell's
        LayerNorm as ``rnn.norm_weight_l{k}``, ``rnn.norm_bias_l{k}`` in place of the state's weights; the
        adaptive softmax as nn.AdaptiveLogSoftmaxWithLoss, and ``head.rank``, each id's place in the
        frequency order its clusters follow)."""
        E, H, G = self.embedding_size, self.hidden_size, GATES[self.cell]
        assert E is not None  # __post_init__ sets it
        shapes = {"embedding.weight": (self.vocab_size, E), **self._head_shapes()}
        for k in range(self.num_layers):
            size = E if k == 0 else H
            if self.cell in MIN_CELLS:
                layer = {"norm_weight": (size,), "norm_bias": (size,), "weight_ih": (G * H, size), "bias_ih": (G * H,)}
            else:
                layer = {"weight_ih": (G * H, size), "weight_hh": (G * H, H), "bias_ih": (G * H,), "bias_hh": (G * H,)}
            shapes.update({f"rnn.{name}_l{k}": shape for name, shape in layer.items()})
        return shapes

    def _head_shapes(self) -> dict[str, tuple[int, ...]]:
        """The output layer's stored tensors and their shapes."""
        V, H = self.vocab_size, self.hidden_size
        if not self.adaptive:
            return {"head.bias": (V,), **({} if self.tie_weights else {"head.weight": (V, H)})}
        assert self.cutoffs is not None  # an adaptive config has its cutoffs (resolve_softmax sets them)
        cuts = [*self.cutoffs, V]
        first = cuts[0] + len(cuts) - 1  # the shortlist, and one entry per tail cluster
        shapes = {"head.head.weight": (first, H), "head.head.bias": (first,), "head.rank": (V,)}
        for i in range(len(cuts) - 1):
            width = H // ADAPTIVE_DIV ** (i + 1)
            shapes.update(
                {
                    f"head.tail.{i}.0.weight": (width, H),  # projection, then cluster
                    f"head.tail.{i}.1.weight": (cuts[i + 1] - cuts[i], width),
                }
            )
        return shapes

    @property
    def num_parameters(self) -> int:
        """The parameter count, computed without building anything (closed form, any size)."""
        V, E, H, L = self.vocab_size, self.embedding_size, self.hidden_size, self.num_layers
        assert E is not None  # __post_init__ sets it
        G = GATES[self.cell]
        if self.cell in MIN_CELLS:  # per layer: a LayerNorm of the input, then its gates
            rnn = (2 * E + G * H * (E + 1)) + (L - 1) * (2 * H + G * H * (H + 1))
        else:
            rnn = G * H * (E + H + 2) + (L - 1) * G * H * (2 * H + 2)
        head = sum(math.prod(shape) for name, shape in self._head_shapes().items() if name != "head.rank")
        return V * E + rnn + head

    def resolve_softmax(self, counts: Iterable[int]) -> ModelConfig:
        """This config with ``auto`` decided and the adaptive softmax's cutoffs set, for a corpus whose
        training split holds ``counts[i]`` of character ``i``."""
        from dataclasses import replace

        softmax = self.softmax
        if softmax == "auto":
            softmax = (
                "adaptive"
                if (self.vocab_size >= ADAPTIVE_FROM and not self.tie_weights and self.hidden_size >= ADAPTIVE_DIV)
                else "full"
            )
        if softmax == "full":
            return replace(self, softmax="full", cutoffs=None)
        if self.vocab_size < 2:
            raise ChargenError(
                "the adaptive softmax needs at least 2 characters and this corpus has 1; use --softmax full"
            )
        return replace(self, softmax="adaptive", cutoffs=self.cutoffs or default_cutoffs(counts, self.hidden_size))


# The default clusters of the adaptive softmax: the first holds the likeliest characters that make up
# COVER[0] of the training text, the next those up to COVER[1], the last the rest. At least MIN_SHORTLIST
# characters go in the first. Measured at 3,989 characters (3 minutes, as above): 90%/99% (cutoffs
# 344,1072) reached 2.777 nats, 80%/95% (159,558) 2.837, 95%/99.5% (558,1319) 4.491.
COVER, MIN_SHORTLIST = (0.9, 0.99), 64


def default_cutoffs(counts: Iterable[int], hidden_size: int, cover: tuple[float, ...] = COVER) -> list[int]:
    """Cutoffs for a vocabulary with these training counts: each cluster ends where the likeliest
    characters reach the next share of the text in ``cover``; increasing, each below the vocabulary's
    size, and no more than the hidden size can narrow to."""
    ranked = sorted((int(c) for c in counts), reverse=True)
    V, total = len(ranked), sum(ranked)
    cuts: list[int] = []
    seen, i = 0, 0
    for share in cover:
        while i < V and (seen < share * total or i < MIN_SHORTLIST):
            seen += ranked[i]
            i += 1
        if i < V and (not cuts or i > cuts[-1]):
            cuts.append(i)
    while cuts and hidden_size // ADAPTIVE_DIV ** len(cuts) < 1:
        cuts.pop()
    return cuts or [max(1, V - 1)]
