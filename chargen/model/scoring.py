"""Scoring text under a model with the state carried: the one implementation behind training's
validation, ``chargen eval`` and ``Sampler.score``.

A :class:`StreamScorer` reads B streams of ids that arrive in pieces. Each
piece's first id is predicted from the last id of the piece before (or from
the stream's first input) and the state carried from it, so a text scored in
pieces gets exactly the log-probabilities it gets whole.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

if TYPE_CHECKING:
    from .network import CharRNN, RNNState

# A context manager factory, called around each forward: ``precision.autocast`` bound to a precision, or no-op.
Autocast = Callable[[], contextlib.AbstractContextManager[Any]]


class IdSlices(Protocol):
    """Ids read by slices: an array, a memory map, or the data wing's IdsReader."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: slice, /) -> np.ndarray: ...


WARMUP = 256  # ids each validation stream reads before it is scored


class StreamScorer:
    """Per-id log-probabilities of B streams read piece by piece (see the module docstring)."""

    def __init__(self, model: CharRNN, first_inputs: torch.Tensor, autocast: Autocast = contextlib.nullcontext):
        self.model = model
        self.prev = first_inputs  # (B,) the id before each stream's next target
        self.state: RNNState | None = None
        self.autocast = autocast

    @torch.no_grad()
    def __call__(self, targets: torch.Tensor, scored: torch.Tensor | None = None) -> torch.Tensor:
        """targets (B, t) int64 -> log-probabilities (B, t) float64; 0 where ``scored`` (B, t) is False.

        Every target is read (it is the next step's input); only the scored ones count.
        """
        x = torch.cat([self.prev[:, None], targets[:, :-1]], dim=1)  # (B, t)
        with self.autocast():
            h, self.state = self.model.features(x, self.state)  # (B, t, H)
            lp = self.model.target_log_probs(h, targets).double()  # (B, t)
        self.prev = targets[:, -1]
        return lp if scored is None else lp.masked_fill(~scored, 0.0)


# The characters an evaluation scores are cut into segments of one length, which depends only on how
# many characters are scored (never on the batch size, so neither does the figure): a small sample is
# cut into SEGMENTS segments (no shorter than MIN_SEGMENT), a large one into segments of MAX_SEGMENT,
# which keeps the warm-up's cost under 7% and gives a GPU as many parallel rows as it is asked for.
SEGMENTS, MIN_SEGMENT, MAX_SEGMENT = 32, 1024, 4096


@dataclass(frozen=True, eq=False)
class Sample:
    """Which characters of a split an evaluation scores: segments of ``length`` ids at ``starts``, the
    last one cut to ``last`` ids, exactly as many as were asked for.

    With every character asked for, the segments tile the split; otherwise
    they are spread evenly over the whole split, first and last segment at its
    two ends. A pure function of the split's length and the number asked for,
    so every evaluation of a run (and of its resumed continuation) scores the
    same characters.
    """

    starts: np.ndarray  # (K,) offsets into the split
    length: int  # L, ids per segment
    n: int  # ids in the split
    last: int = 0  # ids scored in the last segment (<= L)

    @classmethod
    def plan(cls, n: int, chars: int | None = None) -> Sample:
        m = n if chars is None else min(int(chars), n)
        if m <= 0:
            return cls(np.zeros(0, dtype=np.int64), 0, n)
        length = min(MAX_SEGMENT, max(-(-m // SEGMENTS), min(MIN_SEGMENT, m)))
        k = -(-m // length)
        last = m - (k - 1) * length
        if m == n or k * length >= n:  # the whole split, or all but less than a segment of it: tiled from the start
            starts = np.arange(0, m, length, dtype=np.int64)
            return cls(starts, length, n, m - int(starts[-1]))
        starts = np.linspace(0, n - length, k).round().astype(np.int64) if k > 1 else np.array([(n - length) // 2])
        return cls(starts, length, n, last)

    def scored(self, i: int) -> int:
        """How many ids segment ``i`` scores."""
        return self.last if i == len(self.starts) - 1 else self.length

    @property
    def count(self) -> int:
        """How many ids are scored."""
        return (len(self.starts) - 1) * self.length + self.last if len(self.starts) else 0

    @property
    def whole(self) -> bool:
        return self.count == self.n


class SampleScorer:
    """Scores a :class:`Sample` of a split (a memory map is fine: only its segments are read).

    Segments are read ``batch_size`` at a time as parallel rows, each in chunks
    of ``chunk`` steps with its state carried, after first reading the
    ``warmup`` ids before it unscored (from the split, or from ``context``, the
    end of the text before the split). Every segment is scored the same way
    whatever the batch size. It keeps the time a chunk took, to tell how long
    an evaluation will take (:meth:`estimate`) and to give one up before it
    runs past a deadline.
    """

    def __init__(
        self,
        ids: IdSlices,
        context: np.ndarray,
        sample: Sample,
        *,
        batch_size: int = 32,
        chunk: int = 256,
        warmup: int = WARMUP,
        device: torch.device = torch.device("cpu"),
        autocast: Autocast = contextlib.nullcontext,
    ):
        self.ids, self.sample = ids, sample
        self.context = np.asarray(context[-(warmup + 1) :] if len(context) > warmup else context, dtype=np.int64)
        self.batch_size, self.chunk, self.warmup = max(1, batch_size), chunk, warmup
        self.device, self.autocast = device, autocast
        k = len(sample.starts)
        groups = -(-k // self.batch_size)
        self.chunks = groups * -(-(warmup + sample.length) // chunk)  # scorer calls in one evaluation
        self.seconds_per_chunk: float | None = None

    def estimate(self) -> float | None:
        """Seconds one evaluation takes, from the chunks timed so far (None before any)."""
        return None if self.seconds_per_chunk is None else self.chunks * self.seconds_per_chunk

    def probe(self, model: CharRNN) -> None:
        """Time a chunk of the first segments, to estimate an evaluation before the first one: the second
        where there are two (the first call pays one-time costs, which would make an evaluation look too
        long for a short --max-time budget, and then none would run)."""
        if len(self.sample.starts):
            self.__call__(model, probe=True)

    @torch.no_grad()
    def __call__(
        self,
        model: CharRNN,
        deadline: float | None = None,
        probe: bool = False,
        tick: Callable[[int], object] | None = None,
    ) -> tuple[float, int] | None:
        """(summed nats, count) over the sample; None when it would not end by ``deadline`` (perf_counter).
        ``tick(n)``, if given, is called as each chunk of n scored ids is done (a progress bar)."""
        sample = self.sample
        if not len(sample.starts):
            return 0.0, 0
        was_training = model.training
        model.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        done, began = 0, time.perf_counter()
        try:
            for g in range(0, len(sample.starts), self.batch_size):
                rows, scored = self._rows(range(g, min(g + self.batch_size, len(sample.starts))))
                targets = torch.from_numpy(rows[:, 1:]).to(self.device)
                mask = torch.from_numpy(scored).to(self.device)
                scorer = StreamScorer(model, torch.from_numpy(rows[:, 0]).to(self.device), self.autocast)
                for lo in range(0, targets.shape[1], self.chunk):
                    total += scorer(targets[:, lo : lo + self.chunk], mask[:, lo : lo + self.chunk]).sum()
                    done += 1
                    if tick is not None:
                        tick(int(scored[:, lo : lo + self.chunk].sum()))
                    now = time.perf_counter()
                    if probe:
                        float(total)  # wait for the device
                        now = time.perf_counter()
                        self.seconds_per_chunk = now - began
                        if done == min(2, self.chunks):
                            return None
                        began = now  # the first chunk was the warm-up: time the next
                        continue
                    if deadline is not None and now + (now - began) / done * (self.chunks - done) > deadline:
                        return None
            result = 0.0 - float(total), sample.count  # not -total: a text scored perfectly is 0.0, not -0.0
            self.seconds_per_chunk = (time.perf_counter() - began) / done
            return result
        finally:
            model.train(was_training)

    def _rows(self, segments: range) -> tuple[np.ndarray, np.ndarray]:
        """The ids these segments read (1 + warmup + L each) and which of them are scored."""
        W, L, _n = self.warmup, self.sample.length, self.sample.n
        rows = np.empty((len(segments), 1 + W + L), dtype=np.int64)
        scored = np.zeros((len(segments), W + L), dtype=bool)
        for r, i in enumerate(segments):
            s = int(self.sample.starts[i])
            lo, hi = s - W - 1, s + self.sample.scored(i)
            own = np.asarray(self.ids[max(lo, 0) : hi], dtype=np.int64)
            before = self.context[len(self.context) - min(-lo, len(self.context)) :] if lo < 0 else self.context[:0]
            row = np.concatenate([before, own])
            # Where the text before runs out, the first id stands in (read, never scored); after the last
            # scored id, the last one does.
            pad_front = 1 + W + L - len(row) - (s + L - hi)
            rows[r] = np.concatenate([np.full(pad_front, row[0]), row, np.full(s + L - hi, row[-1])])
            scored[r, W : W + hi - s] = True
        return rows, scored


def streams_loss(
    model: CharRNN,
    ids: IdSlices,
    context: np.ndarray,
    *,
    batch_size: int = 32,
    chunk: int = 256,
    warmup: int = WARMUP,
    device: torch.device = torch.device("cpu"),
    autocast: Autocast = contextlib.nullcontext,
    chars: int | None = None,
) -> tuple[float, int]:
    """Summed loss (nats) and count over ``ids`` (all of it, or a ``chars`` sample), which follow
    ``context`` (the end of the text before them): see :class:`Sample` and :class:`SampleScorer`."""
    scorer = SampleScorer(
        ids,
        context,
        Sample.plan(len(ids), chars),
        batch_size=batch_size,
        chunk=chunk,
        warmup=warmup,
        device=device,
        autocast=autocast,
    )
    result = scorer(model)
    assert result is not None  # None only past a deadline or when probing, and neither is asked here
    return result


def mean_loss(total: float, count: int) -> tuple[float, float]:
    """(nats per character, bits per character) of a summed loss."""
    nats = total / count if count else float("nan")
    return nats, nats / math.log(2)
