"""The sampler: load a run, generate or stream text, score text.

Usage::

    from chargen import Sampler
    s = Sampler.load("runs/shakespeare")                  # best weights, CPU
    s.generate("ROMEO:", length=300, temperature=0.8, top_p=0.95, seed=1)
    s.generate("ROMEO:", length=300, n=4, seed=1)         # 4 samples in one batch
    for piece in s.stream("ROMEO:", length=300, seed=1): print(piece, end="")
    s.score("To be, or not to be").bpc

The prompt is primed with one forward call over all of it; after that each
character costs one fast recurrent step (decode.py) with the state carried.
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
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .checkpoint import load_weights
from .config import SampleOptions
from .decode import FastStep, sample_ids
from .devices import resolve_device
from .errors import ChargenError
from .evaluate import WARMUP, Sample, SampleScorer, StreamScorer
from .model import CharRNN
from .rundir import open_run_dir
from .tokenizer import CharVocab


@dataclass
class Score:
    """Per-character log-probabilities (natural log) of a text, and their mean loss."""

    logprobs: np.ndarray    # (N,), one per character (after normalization); empty for score_file
    count: int              # characters scored
    nats: float             # mean negative log-probability per character
    bpc: float              # nats / ln 2


class Sampler:
    """A trained model ready to generate and score text. Safe to share between threads."""

    def __init__(self, model: CharRNN, vocab: CharVocab, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.vocab = vocab
        self.fast_step = FastStep(self.model)

    @classmethod
    def load(cls, run_dir: str | Path, device: str | torch.device = "cpu", checkpoint: str = "best") -> "Sampler":
        """Load a run folder: config, vocabulary and weights (``best`` or ``last``); no pickle."""
        if checkpoint not in ("best", "last"):
            raise ChargenError(f"checkpoint must be best or last, got {checkpoint!r}")
        if not isinstance(run_dir, (str, os.PathLike)):
            raise ChargenError(f"run_dir must be the path of a run folder, got {run_dir!r}")
        run = open_run_dir(run_dir)
        device = resolve_device(device)
        path = run.dir / "model.safetensors" if checkpoint == "best" else run.dir / "last" / "model.safetensors"
        model = CharRNN(run.model_config)
        load_weights(model, path)
        return cls(model, run.vocab, device)

    # -- encoding ----------------------------------------------------------

    def encode(self, text: str, unknown: str = "error") -> np.ndarray:
        """Ids of ``text``; characters outside the vocabulary are an error (or UNK with ``unknown="unk"``)."""
        if unknown not in ("error", "unk"):
            raise ChargenError(f"unknown must be error or unk, got {unknown!r}")
        if not isinstance(text, str):
            raise ChargenError(f"text must be a str, got {type(text).__name__}")
        return self.vocab.encode_array(text, strict=unknown != "unk").astype(np.int64)

    @torch.inference_mode()
    def _prime(self, prompt_ids: np.ndarray, batch: int):
        """One forward call over [start, prompt]: logits (batch, V) for the next character, and the state."""
        ids = np.concatenate([[self.vocab.start_id], prompt_ids]).astype(np.int64)
        h, state = self.model.features(torch.from_numpy(ids).to(self.device)[None, :])  # (1, T, H)
        logits = self.model.logits(h[:, -1]).expand(batch, -1).contiguous()             # (batch, V)
        if isinstance(state, tuple):
            state = tuple(s.expand(-1, batch, -1).contiguous() for s in state)
        else:
            state = state.expand(-1, batch, -1).contiguous()
        return logits, state

    # -- generation --------------------------------------------------------

    def _options(self, prompt: str, options: SampleOptions | None, settings: dict) -> SampleOptions:
        if not isinstance(prompt, str):
            raise ChargenError(f"the prompt must be text (str), got {type(prompt).__name__}")
        if options is not None and not isinstance(options, SampleOptions):
            raise ChargenError(f"options must be a SampleOptions, got {type(options).__name__}; "
                               "or pass the settings as keywords")
        unknown = sorted(set(settings) - {f.name for f in fields(SampleOptions)})
        if unknown:
            raise ChargenError(f"unknown sampling option(s) {', '.join(unknown)}; the options are "
                               f"{', '.join(f.name for f in fields(SampleOptions))}")
        opts = SampleOptions(**settings) if options is None else replace(options, **settings)
        return opts if opts.seed is not None else replace(opts, seed=secrets.randbits(63))

    def _ids(self, prompt: str, opts: SampleOptions) -> Iterator[torch.Tensor]:
        """The next ids (n,) step by step, ``length`` times."""
        prompt_ids = self.encode(prompt, opts.unknown)
        seeds = np.uint64(opts.seed) + np.arange(opts.n, dtype=np.uint64)
        logits, state = self._prime(prompt_ids, opts.n)
        return sample_ids(self.fast_step, logits, self.fast_step.to_fast(state), seeds, opts, self.vocab.unk_id)

    def generate(self, prompt: str = "", options: SampleOptions | None = None, **settings) -> str | list[str]:
        """The continuation of ``prompt`` (without it): a str, or a list of ``n`` str decoded in one batch.

        ``settings`` are :class:`SampleOptions` fields (``length``, ``temperature``,
        ``top_k``, ``top_p``, ``stop``, ``n``, ``seed``, ``unknown``), given alone
        or over an ``options`` object.
        """
        opts = self._options(prompt, options, settings)
        steps = self._ids(prompt, opts)
        if not opts.stop:  # nothing to watch for: keep ids on the device, decode once at the end
            columns = list(steps)
            if not columns:
                return "" if opts.n == 1 else [""] * opts.n
            rows = torch.stack(columns, dim=1).cpu().numpy()                   # (n, length)
            texts = [self.vocab.decode(row) for row in rows]
        else:
            texts = self._until_stops(steps, opts)
        return texts[0] if opts.n == 1 else texts

    def _until_stops(self, steps: Iterator[torch.Tensor], opts: SampleOptions) -> list[str]:
        chars, stops = self.vocab.chars, opts.stop
        outs = [[] for _ in range(opts.n)]
        done = [False] * opts.n
        for ids in steps:
            for row, i in enumerate(ids.tolist()):
                if done[row]:
                    continue
                outs[row].append(chars[i])
                if _ends_with_stop(outs[row], stops):
                    done[row] = True
            if all(done):
                break
        return [_cut_at_stop("".join(o), stops) for o in outs]

    def stream(self, prompt: str = "", options: SampleOptions | None = None, **settings) -> Iterator[str]:
        """Yield the continuation in pieces as it is produced; joined, they equal ``generate``.

        Text that could be the start of a stop string is held back until it is
        known not to be one. Options are checked now, not at the first piece.
        """
        opts = self._options(prompt, options, settings)
        if opts.n != 1:
            raise ChargenError(f"stream produces one sample; pass n=1 (got n={opts.n}), or use generate")
        self.encode(prompt, opts.unknown)
        return self._stream(prompt, opts)

    def _stream(self, prompt: str, opts: SampleOptions) -> Iterator[str]:
        chars, stops = self.vocab.chars, opts.stop
        pending = ""
        for ids in self._ids(prompt, opts):
            pending += chars[int(ids[0])]
            if not stops:
                yield pending
                pending = ""
                continue
            hit = _cut_at_stop(pending, stops)
            if hit != pending:
                if hit:
                    yield hit
                return
            keep = _partial_stop_suffix(pending, stops)
            if len(pending) > keep:
                yield pending[: len(pending) - keep]
                pending = pending[len(pending) - keep:]
        if pending:
            yield pending

    # -- scoring -----------------------------------------------------------

    def _scorer(self) -> StreamScorer:
        return StreamScorer(self.model, torch.tensor([self.vocab.start_id], device=self.device))

    @torch.inference_mode()
    def score(self, text: str, unknown: str = "error") -> Score:
        """Log-probability of every character of ``text`` (normalized as the corpus was)."""
        ids = self.encode(text, unknown)
        if ids.size == 0:
            return _make_score(np.zeros(0), 0.0, 0)
        lp = self._scorer()(torch.from_numpy(ids).to(self.device)[None, :])[0].cpu().numpy()
        return _make_score(lp, float(lp.sum()), lp.size)

    @torch.inference_mode()
    def score_file(self, path: str | Path, chunk_chars: int = 1 << 16, unknown: str = "unk") -> Score:
        """Score a whole file, streaming through it with the state carried: memory stays small."""
        from .files import read_text_pieces
        scorer = self._scorer()
        total, count = 0.0, 0
        for piece in read_text_pieces(Path(path)):
            ids = torch.from_numpy(self.encode(piece, unknown)).to(self.device)
            for lo in range(0, ids.numel(), chunk_chars):
                lp = scorer(ids[None, lo: lo + chunk_chars])
                total += float(lp.sum())
                count += lp.numel()
        if count == 0:
            raise ChargenError(f"{path} is empty; pass a file with text to score")
        return _make_score(np.zeros(0), total, count)


    def score_split(self, corpus, split: str = "val", *, batch_size: int = 32, chars: int | None = None,
                    progress: bool = False) -> Score:
        """The loss of a prepared corpus's split (a :class:`~chargen.prepared.PreparedCorpus`), as training
        validates: every character (or a ``chars`` sample), in segments warmed on the text before them.
        Streams from the memory map: memory stays small whatever the split's size."""
        if split not in ("train", "val", "test"):
            raise ChargenError(f"split must be train, val or test, got {split!r}")
        if corpus.vocab.chars != self.vocab.chars:
            raise ChargenError("this corpus's vocabulary is not the model's; score the corpus the run was trained on")
        ids = corpus.reader(split)
        if len(ids) == 0:
            raise ChargenError(f"the corpus {corpus.meta['source']} has no {split} split (0 characters); "
                               "choose another split")
        scorer = SampleScorer(ids, corpus.before(split, WARMUP + 1), Sample.plan(len(ids), chars),
                              batch_size=batch_size, device=self.device)
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=scorer.sample.count, unit="char", unit_scale=True, leave=False, desc=f"eval {split}")
        try:
            total, count = scorer(self.model, tick=bar.update if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
        return _make_score(np.zeros(0), -total, count)


def _make_score(logprobs: np.ndarray, total: float, count: int) -> Score:
    nats = -total / count if count else float("nan")
    return Score(logprobs=logprobs, count=count, nats=nats, bpc=nats / math.log(2))


def _ends_with_stop(chars: list[str], stops: tuple[str, ...]) -> bool:
    longest = max(len(s) for s in stops)
    tail = "".join(chars[-longest:])
    return any(tail.endswith(s) for s in stops)


def _cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    """Text up to the first place where a stop string appears (the stop string removed)."""
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if i >= 0:
            cut = min(cut, i)
    return text[:cut]


def _partial_stop_suffix(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best
