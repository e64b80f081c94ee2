"""The sampler: load a run, generate or stream text, score text.

Usage::

    from chargen import Sampler
    s = Sampler.load("runs/shakespeare")                  # best weights, CPU
    s.generate("ROMEO:", length=300, temperature=0.8, top_p=0.95, seed=1)
    s.generate("ROMEO:", length=300, n=4, seed=1)         # 4 samples in one batch
    for piece in s.stream("ROMEO:", length=300, seed=1): print(piece, end="")
    s.score("To be, or not to be").bpc

The model runs on a backend: ``numpy`` (numpy_step.py: the CPU, torch never
imported) or ``torch`` (decode.py: any device). Each reads the prompt, then
draws each character with one fast recurrent step, the state carried. This
module imports neither backend until a sampler is made.
An empty prompt starts from the zero state fed a newline (the character that
starts lines and documents), which is not part of the result; ``score`` scores
the first character of a text the same way.

Options (length, temperature, top-k, top-p, stop strings, n, seed, the
unknown-character policy) are one validated ``SampleOptions``; the keyword
arguments of ``generate`` and ``stream`` are its fields.

Seeding rule: sample ``i`` of ``generate(..., n=N, seed=s)`` is the text that
``generate(..., seed=s + i)`` returns. ``seed=None`` draws a fresh seed.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ..config import SampleOptions
from ..data.vocab import CharVocab
from ..errors import ChargenError
from ..runs.folder import open_run_dir
from .backends import resolve_backend
from .stops import cut_at_stop, ends_with_stop, partial_stop_suffix

if TYPE_CHECKING:
    import torch

    from ..data.prepared import PreparedCorpus
    from ..model.network import CharRNN
    from .inspect import Inspection
    from .numpy_step import NumpyRuntime
    from .rules import ArrayOps, History
    from .torch_step import FastStep, TorchRuntime


@dataclass
class Score:
    """Per-character log-probabilities (natural log) of a text, and their mean loss."""

    logprobs: np.ndarray  # (N,), one per character (after normalization); empty for score_file
    count: int  # characters scored
    nats: float  # mean negative log-probability per character
    bpc: float  # nats / ln 2


GATHER = 4096  # steps gathered on the device before they are packed (see Sampler._all_ids)


class Sampler:
    """A trained model ready to generate and score text. Safe to share between threads.

    It runs on one of two backends (:attr:`backend`): ``torch`` (any device) or ``numpy`` (the CPU, no
    torch needed), which give the same text for the same seed (see the README on near ties).
    """

    def __init__(self, model: CharRNN, vocab: CharVocab, device: str | torch.device = "cpu"):
        """A torch-backed sampler for a ``CharRNN`` in memory; :meth:`load` reads a run folder."""
        from .torch_step import TorchRuntime

        self.runtime: TorchRuntime | NumpyRuntime
        self.runtime, self.vocab = TorchRuntime(model, device), vocab
        self.run_dir: Path | None = None  # the run folder it was loaded from (the novelty check reads its corpus)

    @classmethod
    def _with(cls, runtime: TorchRuntime | NumpyRuntime, vocab: CharVocab) -> Sampler:
        self = cls.__new__(cls)
        self.runtime, self.vocab, self.run_dir = runtime, vocab, None
        return self

    @classmethod
    def load(
        cls,
        run_dir: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        checkpoint: str = "best",
        backend: str = "auto",
    ) -> Sampler:
        """Load a run folder: config, vocabulary and weights (``best`` or ``last``); no pickle.

        ``backend``: ``numpy`` (CPU only, never imports torch), ``torch``, or ``auto`` (see
        :func:`resolve_backend`: NumPy on the CPU)."""
        if checkpoint not in ("best", "last"):
            raise ChargenError(f"checkpoint must be best or last, got {checkpoint!r}")
        if not isinstance(run_dir, (str, os.PathLike)):
            raise ChargenError(f"run_dir must be the path of a run folder, got {run_dir!r}")
        backend = resolve_backend(backend, device)
        run = open_run_dir(run_dir)
        path = run.dir / "model.safetensors" if checkpoint == "best" else run.dir / "last" / "model.safetensors"
        if backend == "numpy":
            from .numpy_step import NumpyRuntime, NumpyStep

            sampler = cls._with(NumpyRuntime(NumpyStep.from_file(path, run.model_config)), run.vocab)
            sampler.run_dir = run.dir
            return sampler
        from ..model.devices import resolve_device
        from ..model.network import CharRNN
        from ..runs.checkpoint import load_weights

        device = resolve_device(device)
        model = CharRNN(run.model_config)
        load_weights(model, path)
        sampler = cls(model, run.vocab, device)
        sampler.run_dir = run.dir
        return sampler

    @property
    def backend(self) -> str:
        """``torch`` or ``numpy``."""
        return self.runtime.name

    def _torch(self, what: str) -> TorchRuntime:
        if self.backend != "torch":
            raise ChargenError(
                f"{what} belongs to the torch backend; this sampler runs on {self.backend} "
                "(load it with backend='torch')"
            )
        return cast("TorchRuntime", self.runtime)  # the backend's name says which runtime it is

    @property
    def model(self) -> CharRNN:
        """The ``CharRNN`` (torch backend only)."""
        return self._torch("the model").model

    @property
    def device(self) -> torch.device:
        """The torch device (torch backend only)."""
        return self._torch("the device").device

    @property
    def fast_step(self) -> FastStep:
        """The single-step kernel the torch backend decodes with (``decode.FastStep``)."""
        return self._torch("the fast step").step

    @fast_step.setter
    def fast_step(self, step: FastStep) -> None:
        self._torch("the fast step").step = step

    # -- encoding ----------------------------------------------------------

    def encode(self, text: str, unknown: str = "error") -> np.ndarray:
        """Ids of ``text``; characters outside the vocabulary are an error (or UNK with ``unknown="unk"``)."""
        if unknown not in ("error", "unk"):
            raise ChargenError(f"unknown must be error or unk, got {unknown!r}")
        if not isinstance(text, str):
            raise ChargenError(f"text must be a str, got {type(text).__name__}")
        return self.vocab.encode_array(text, strict=unknown != "unk").astype(np.int64)

    def _prime(self, prompt_ids: np.ndarray, batch: int) -> tuple[Any, Any]:
        """Logits (batch, V) for the character after [start, prompt], and the per-layer state (in the
        backend's arrays); a model whose scores are not numbers (a run that diverged) is one clear error."""
        logits: Any
        logits, state = self.runtime.prime(np.concatenate([[self.vocab.start_id], prompt_ids]).astype(np.int64), batch)
        first = self.runtime.host_logits(logits[:1])
        if np.isnan(first).any() or np.isposinf(first).any():  # (-inf is a log-probability of 0: allowed)
            raise ChargenError(
                "this model's scores after the prompt are not numbers (NaN or infinite): its training diverged; "
                "sample an earlier run, or train again with a lower --lr"
            )
        return logits, state

    # -- generation --------------------------------------------------------

    def _options(self, prompt: str, options: SampleOptions | None, settings: dict) -> SampleOptions:
        if not isinstance(prompt, str):
            raise ChargenError(f"the prompt must be text (str), got {type(prompt).__name__}")
        if options is not None and not isinstance(options, SampleOptions):
            raise ChargenError(
                f"options must be a SampleOptions, got {type(options).__name__}; or pass the settings as keywords"
            )
        unknown = sorted(set(settings) - {f.name for f in fields(SampleOptions)})
        if unknown:
            raise ChargenError(
                f"unknown sampling option(s) {', '.join(unknown)}; the options are "
                f"{', '.join(f.name for f in fields(SampleOptions))}"
            )
        opts = SampleOptions(**settings) if options is None else replace(options, **settings)
        if opts.logit_bias:  # checked now against the vocabulary, not at the first draw (a server's loop)
            from .rules import bias_vector

            bias_vector(opts.logit_bias, self.vocab)
        return opts if opts.seed is not None else replace(opts, seed=secrets.randbits(63))

    def _ids(self, prompt: str, opts: SampleOptions) -> Iterator[torch.Tensor] | Iterator[np.ndarray]:
        """The next ids (n,) step by step, ``length`` times."""
        prompt_ids = self.encode(prompt, opts.unknown)
        assert opts.seed is not None  # _options draws one when none is given
        seeds = np.uint64(opts.seed) + np.arange(opts.n, dtype=np.uint64)
        logits, state = self._prime(prompt_ids, opts.n)
        history = self._history(opts, prompt_ids, opts.n)
        return self.runtime.sample(logits, state, seeds, opts, self.vocab.unk_id, history)

    def _history(
        self, opts: SampleOptions, prompt_ids: np.ndarray, batch: int, ops: ArrayOps | None = None
    ) -> History | None:
        """The rules' record of ``batch`` rows continuing ``prompt_ids`` (``rules.py``), or None when
        ``opts`` has no rule; ``ops``: where its arrays live (the backend's by default)."""
        from .rules import start_history

        return start_history(ops or self.runtime.ops, opts, self.vocab, prompt_ids, batch)

    def generate(self, prompt: str = "", options: SampleOptions | None = None, **settings: Any) -> str | list[str]:
        """The continuation of ``prompt`` (without it): a str, or a list of ``n`` str decoded in one batch.

        ``settings`` are :class:`SampleOptions` fields (``length``, ``temperature``, ``top_k``, ``top_p``,
        ``min_p``, ``stop``, ``n``, ``seed``, ``unknown``, the rules on the logits, ``best_of``, ``beam``),
        given alone or over an ``options`` object.
        """
        opts = self._options(prompt, options, settings)
        if opts.beam is not None or (opts.best_of or 1) > opts.n:
            from .search import search

            texts = search(self, prompt, opts)
            return texts[0] if opts.n == 1 else texts
        steps = self._ids(prompt, opts)
        if not opts.stop:  # nothing to watch for: keep ids on the device, decode once at the end
            rows = self._all_ids(steps, opts.n)  # (n, length)
            texts = [self.vocab.decode(row) for row in rows]
        else:
            texts = self._until_stops(steps, opts)
        return texts[0] if opts.n == 1 else texts

    def _all_ids(self, steps: Iterator[torch.Tensor] | Iterator[np.ndarray], n: int) -> np.ndarray:
        """Every step's ids as one (n, steps) array. Steps are gathered GATHER at a time on the device, then
        packed into the smallest integer type the vocabulary needs: a long text costs about a byte a
        character, not an array object each (10 million characters would otherwise take gigabytes)."""
        dtype = np.min_scalar_type(max(len(self.vocab) - 1, 0))
        packed, columns = [np.zeros((n, 0), dtype=dtype)], []
        for ids in steps:
            columns.append(ids)
            if len(columns) == GATHER:
                packed.append(self.runtime.to_numpy(columns).astype(dtype))
                columns = []
        if columns:
            packed.append(self.runtime.to_numpy(columns).astype(dtype))
        return np.concatenate(packed, axis=1)

    def _host_steps(self, steps: Iterator[torch.Tensor] | Iterator[np.ndarray]) -> Iterator[list[int]]:
        """Each step's ids (n,) as ints, read ``runtime.read_every`` steps at a time in one copy."""
        every, columns = self.runtime.read_every, []
        for ids in steps:
            if every == 1:
                yield ids.tolist()
                continue
            columns.append(ids)
            if len(columns) == every:
                yield from self.runtime.to_numpy(columns).T.tolist()
                columns = []
        if columns:
            yield from self.runtime.to_numpy(columns).T.tolist()

    def _until_stops(self, steps: Iterator[torch.Tensor] | Iterator[np.ndarray], opts: SampleOptions) -> list[str]:
        chars, stops = self.vocab.chars, opts.stop
        outs: list[list[str]] = [[] for _ in range(opts.n)]
        done = [False] * opts.n
        for ids in self._host_steps(steps):
            for row, i in enumerate(ids):
                if done[row]:
                    continue
                outs[row].append(chars[i])
                if ends_with_stop(outs[row], stops):
                    done[row] = True
            if all(done):
                break
        return [cut_at_stop("".join(o), stops) for o in outs]

    def stream(self, prompt: str = "", options: SampleOptions | None = None, **settings: Any) -> Iterator[str]:
        """Yield the continuation in pieces as it is produced; joined, they equal ``generate``.

        Text that could be the start of a stop string is held back until it is
        known not to be one. Options are checked now, not at the first piece.
        """
        opts = self._options(prompt, options, settings)
        if opts.n != 1:
            raise ChargenError(f"stream produces one sample; pass n=1 (got n={opts.n}), or use generate")
        if opts.beam is not None or (opts.best_of or 1) > 1:
            raise ChargenError("beam and best_of choose among whole texts, which cannot be streamed; use generate")
        self.encode(prompt, opts.unknown)
        return self._stream(prompt, opts)

    def _stream(self, prompt: str, opts: SampleOptions) -> Iterator[str]:
        chars, stops = self.vocab.chars, opts.stop
        pending = ""
        for ids in self._host_steps(self._ids(prompt, opts)):
            pending += chars[ids[0]]
            if not stops:
                yield pending
                pending = ""
                continue
            hit = cut_at_stop(pending, stops)
            if hit != pending:
                if hit:
                    yield hit
                return
            keep = partial_stop_suffix(pending, stops)
            if len(pending) > keep:
                yield pending[: len(pending) - keep]
                pending = pending[len(pending) - keep :]
        if pending:
            yield pending

    # -- novelty -----------------------------------------------------------

    def longest_copy(self, text: str) -> tuple[int, int]:
        """``(length, offset)``: the longest stretch of ``text`` (normalized as the corpus was) that occurs in
        the run's training text, and the character of the training split where it starts; ``(0, 0)`` when
        none does. Characters outside the vocabulary match nothing. Needs the run's corpus (in the cache,
        or its source) and pydivsufsort (``pip install "chargen[novelty]"``); the first call builds the
        suffix array (about a second per 10 MB) and keeps it beside the prepared corpus."""
        from .novelty import longest_copy

        return longest_copy(self, text)

    # -- scoring -----------------------------------------------------------

    def score(self, text: str, unknown: str = "error") -> Score:
        """Log-probability of every character of ``text`` (normalized as the corpus was)."""
        ids = self.encode(text, unknown)
        if ids.size == 0:  # as score_file says of an empty file; a mean over nothing is no score
            raise ChargenError("there is no text to score: give at least one character")
        lp = self.runtime.scorer(self.vocab.start_id)(ids)
        return _make_score(lp, float(lp.sum()), lp.size)

    def score_file(self, path: str | Path, chunk_chars: int = 1 << 16, unknown: str = "unk") -> Score:
        """Score a whole file, streaming through it with the state carried: memory stays small."""
        from ..files import read_text_pieces

        scorer = self.runtime.scorer(self.vocab.start_id)
        total, count = 0.0, 0
        for piece in read_text_pieces(Path(path)):
            ids = self.encode(piece, unknown)
            for lo in range(0, ids.size, chunk_chars):
                lp = scorer(ids[lo : lo + chunk_chars])
                total += float(lp.sum())
                count += lp.size
        if count == 0:
            raise ChargenError(f"{path} is empty; pass a file with text to score")
        return _make_score(np.zeros(0), total, count)

    def score_split(
        self,
        corpus: PreparedCorpus,
        split: str = "val",
        *,
        batch_size: int = 32,
        chars: int | None = None,
        progress: bool = False,
    ) -> Score:
        """The loss of a prepared corpus's split (a :class:`~chargen.data.prepared.PreparedCorpus`), as training
        validates: every character (or a ``chars`` sample), in segments warmed on the text before them.
        Streams from the memory map: memory stays small whatever the split's size."""
        from .splits import score_split

        total, count = score_split(self, corpus, split, batch_size=batch_size, chars=chars, progress=progress)
        return _make_score(np.zeros(0), -total, count)

    # -- inspecting --------------------------------------------------------

    def inspect(self, text: str, **options: Any) -> Inspection:
        """What the network sees reading ``text``: each character's log-probability (as :meth:`score`), the
        likeliest guesses for it, every unit's activation, the units that track simple features, and gate
        saturation (``generate/inspect.py``; ``options``: ``top``, ``layers``, ``units``, ``best``)."""
        from .inspect import inspect

        return inspect(self, text, **options)


def _make_score(logprobs: np.ndarray, total: float, count: int) -> Score:
    nats = -total / count if count else float("nan")
    return Score(logprobs=logprobs, count=count, nats=nats, bpc=nats / math.log(2))
