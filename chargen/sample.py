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

Seeding rule: sample ``i`` of ``generate(..., n=N, seed=s)`` is the text that
``generate(..., seed=s + i)`` returns. ``seed=None`` draws a fresh seed.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .checkpoint import check_run_dir, load_model_weights, read_config, read_tensors
from .decode import FastStep, decode_ids
from .errors import ChargenError
from .model import CharRNN, ModelConfig
from .tokenizer import CharVocab

@dataclass
class Score:
    """Per-character log-probabilities (natural log) of a text, and their mean loss."""

    logprobs: np.ndarray    # (N,), one per character (after normalization)
    chars: int
    nats: float             # mean negative log-probability per character
    bpc: float              # nats / ln 2


def _check_options(length, temperature, top_k, top_p, n, seed=None):
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63):
        raise ChargenError(f"seed must be a whole number from 0 to 2**63 - 1, got {seed!r}")
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise ChargenError(f"length must be a whole number of 0 or more, got {length!r}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ChargenError(f"temperature must be a finite number of 0 or more, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ChargenError(f"top_k must be a whole number of at least 1, got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, (int, float)) or not (0.0 < top_p <= 1.0)):
        raise ChargenError(f"top_p must be in (0, 1], got {top_p!r}")
    if not isinstance(n, int) or n < 1:
        raise ChargenError(f"n must be at least 1, got {n!r}")


class Sampler:
    """A trained model ready to generate and score text. Safe to share between threads."""

    def __init__(self, model: CharRNN, vocab: CharVocab, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.vocab = vocab
        self.step = FastStep(self.model)
        self._start = vocab.chars.index("\n") if "\n" in vocab.chars else 0

    @classmethod
    def load(cls, run_dir: str | Path, device: str | torch.device = "cpu", checkpoint: str = "best") -> "Sampler":
        """Load a run folder: config, vocabulary and weights (``best`` or ``last``); no pickle."""
        run_dir = check_run_dir(Path(run_dir))
        if checkpoint not in ("best", "last"):
            raise ChargenError(f"checkpoint must be best or last, got {checkpoint!r}")
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ChargenError("device cuda asked for, but this machine has no CUDA device; use cpu")
        config = read_config(run_dir)
        try:
            model_config = ModelConfig.from_dict(config["model"])
        except TypeError as e:
            raise ChargenError(f"{run_dir}/config.json has a bad model section ({e}); the run folder is corrupt") from None
        vocab = CharVocab.load(run_dir / "tokenizer.json")
        if len(vocab) != model_config.vocab_size:
            raise ChargenError(f"{run_dir}/tokenizer.json has {len(vocab)} characters but the model expects "
                               f"{model_config.vocab_size}; the run folder is corrupt")
        path = run_dir / "model.safetensors" if checkpoint == "best" else run_dir / "last" / "model.safetensors"
        model = CharRNN(model_config)
        load_model_weights(model, read_tensors(path), path)
        return cls(model, vocab, device)

    # -- encoding ----------------------------------------------------------

    def encode(self, text: str, unknown: str = "error") -> np.ndarray:
        """Ids of ``text``; characters outside the vocabulary are an error (or UNK with ``unknown="unk"``)."""
        missing = self.vocab.unknown_chars(text)
        if missing and (unknown != "unk" or self.vocab.unk_id is None):
            shown = " ".join(repr(c) for c in missing[:10]) + (" ..." if len(missing) > 10 else "")
            hint = ("pass unknown='unk' (--unknown unk) to map them to the unknown token"
                    if self.vocab.unk_id is not None else "remove them: this vocabulary has no unknown token")
            raise ChargenError(f"characters not in the model's vocabulary: {shown}; {hint}")
        return self.vocab.encode_array(text).astype(np.int64)

    @torch.inference_mode()
    def _prime(self, prompt_ids: np.ndarray, batch: int):
        """One forward call over [start, prompt]: logits (batch, V) for the next character, and the state."""
        ids = torch.from_numpy(np.concatenate([[self._start], prompt_ids]).astype(np.int64)).to(self.device)
        logits, state = self.model(ids[None, :])                     # (1, T, V)
        logits = logits[:, -1].expand(batch, -1).contiguous()        # (batch, V)
        if isinstance(state, tuple):
            state = tuple(s.expand(-1, batch, -1).contiguous() for s in state)
        else:
            state = state.expand(-1, batch, -1).contiguous()
        return logits, state

    # -- generation --------------------------------------------------------

    def _generate_ids(self, prompt: str, length: int, temperature: float, top_k, top_p, seed, n: int,
                      unknown: str) -> Iterator[torch.Tensor]:
        """Yield the next ids (n,) step by step, ``length`` times."""
        prompt_ids = self.encode(prompt, unknown)
        if seed is None:
            seed = secrets.randbits(63)
        seeds = (np.uint64(seed) + np.arange(n, dtype=np.uint64)) if n > 1 else np.array([seed], dtype=np.uint64)
        logits, state = self._prime(prompt_ids, n)
        yield from decode_ids(self.step, logits, self.step.to_fast(state), length, seeds, temperature,
                              top_k, top_p, self.vocab.unk_id)

    def generate(self, prompt: str = "", length: int = 200, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, stop: str | Sequence[str] | None = None, seed: int | None = None,
                 n: int = 1, unknown: str = "error") -> str | list[str]:
        """The continuation of ``prompt`` (without it): a str, or a list of ``n`` str decoded in one batch."""
        _check_options(length, temperature, top_k, top_p, n, seed)
        stops = _stops(stop)
        chars = self.vocab.chars
        steps = self._generate_ids(prompt, length, temperature, top_k, top_p, seed, n, unknown)
        if not stops:  # nothing to watch for: keep ids on the device, decode once at the end
            columns = list(steps)
            if not columns:
                return "" if n == 1 else [""] * n
            rows = torch.stack(columns, dim=1).cpu().numpy()                   # (n, length)
            texts = [self.vocab.decode(row) for row in rows]
            return texts[0] if n == 1 else texts
        outs = [[] for _ in range(n)]
        done = [False] * n
        for ids in steps:
            for row, i in enumerate(ids.tolist()):
                if done[row]:
                    continue
                outs[row].append(chars[i])
                if stops and _ends_with_stop(outs[row], stops):
                    done[row] = True
            if all(done):
                break
        texts = [_cut_at_stop("".join(o), stops) for o in outs]
        return texts[0] if n == 1 else texts

    def stream(self, prompt: str = "", length: int = 200, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, stop: str | Sequence[str] | None = None, seed: int | None = None,
               unknown: str = "error") -> Iterator[str]:
        """Yield the continuation in pieces as it is produced; joined, they equal ``generate``.

        Text that could be the start of a stop string is held back until it is
        known not to be one.
        """
        _check_options(length, temperature, top_k, top_p, 1, seed)   # checked now, not at the first next()
        stops = _stops(stop)
        self.encode(prompt, unknown)
        return self._stream(prompt, length, temperature, top_k, top_p, stops, seed, unknown)

    def _stream(self, prompt, length, temperature, top_k, top_p, stops, seed, unknown) -> Iterator[str]:
        chars = self.vocab.chars
        pending = ""
        for ids in self._generate_ids(prompt, length, temperature, top_k, top_p, seed, 1, unknown):
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

    @torch.inference_mode()
    def score(self, text: str, unknown: str = "error") -> Score:
        """Log-probability of every character of ``text`` (normalized as the corpus was)."""
        ids = self.encode(text, unknown)
        logprobs, _ = self._score_ids(ids, None)
        return _make_score(logprobs)

    @torch.inference_mode()
    def _score_ids(self, ids: np.ndarray, carry):
        """Log-probs of ``ids`` given the state and last id carried from the text before (or the start)."""
        if carry is None:
            prev, state = self._start, None
        else:
            prev, state = carry
        if ids.size == 0:
            return np.zeros(0), carry
        x = torch.from_numpy(np.concatenate([[prev], ids[:-1]]).astype(np.int64)).to(self.device)
        y = torch.from_numpy(ids.astype(np.int64)).to(self.device)
        logits, state = self.model(x[None, :], state)                             # (1, T, V)
        lp = torch.log_softmax(logits[0].float(), dim=-1).gather(1, y[:, None])[:, 0]   # (T,)
        return lp.double().cpu().numpy(), (int(ids[-1]), state)

    def score_file(self, path: str | Path, chunk_chars: int = 1 << 16, unknown: str = "unk") -> Score:
        """Score a whole file, streaming through it with the state carried: memory stays small."""
        from .corpus import read_text_pieces
        total, count = 0.0, 0
        carry = None
        for piece in read_text_pieces(Path(path)):
            ids = self.encode(piece, unknown)
            for lo in range(0, ids.size, chunk_chars):
                lp, carry = self._score_ids(ids[lo: lo + chunk_chars], carry)
                total += float(lp.sum())
                count += lp.size
        if count == 0:
            raise ChargenError(f"{path} is empty; pass a file with text to score")
        nats = -total / count
        return Score(logprobs=np.zeros(0), chars=count, nats=nats, bpc=nats / math.log(2))


def _make_score(logprobs: np.ndarray) -> Score:
    n = int(logprobs.size)
    nats = float(-logprobs.mean()) if n else float("nan")
    return Score(logprobs=logprobs, chars=n, nats=nats, bpc=nats / math.log(2))


def _stops(stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if any(not isinstance(s, str) or not s for s in stops):
        raise ChargenError("stop strings must be non-empty text")
    return stops


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
