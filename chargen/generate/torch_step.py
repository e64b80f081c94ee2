"""Decoding on torch: the sampling rules (``pick``), the draw-and-step loop, and ``TorchRuntime``, the sampler's
torch backend, which steps the network with ``fast_step.FastStep`` (the step with prepared weights).

Random draws come from a counter-based generator (splitmix64 of seed, row and
step), not from a shared RNG: a call's draws depend only on its own seed, so
samplers are safe to share between threads, results are the same on every
device, and row ``i`` of a batch drawn with seed ``s`` is exactly the single
sample drawn with seed ``s + i``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..config import DEFAULT_TEMPERATURE, SampleOptions
from ..model.network import CharRNN
from .draws import draw_loop, uniforms, uniforms_at
from .fast_step import FastState, FastStep
from .rules import NUMPY_OPS, ArrayOps


def _one_thread_after_fork() -> None:
    """In a forked child, torch's CPU thread pool (OpenMP) is the parent's and cannot run: a child that
    samples would wait forever. One thread needs no pool (measured: the child then gives the parent's text
    for the same seed). A process started with ``spawn`` is unaffected."""
    torch.set_num_threads(1)


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_one_thread_after_fork)

if TYPE_CHECKING:
    from ..data.vocab import CharVocab
    from .rules import History

__all__ = ["FastStep", "SampleOptions", "TorchRuntime", "pick", "preview", "sample_ids", "uniforms", "uniforms_at"]


def sample_ids(
    step: FastStep,
    logits: torch.Tensor,
    state: FastState,
    seeds: np.ndarray,
    opts: SampleOptions,
    banned: int | None = None,
    history: History | None = None,
) -> Iterator[torch.Tensor]:
    """Draw the next ids (B,) ``opts.length`` times, from primed logits (B, V) and a per-layer state.

    Row ``i`` draws from ``seeds[i]``; one fast step per character after the first. ``banned``
    (the unknown token) is never drawn; ``history`` applies the rules on the logits (``rules.py``).
    """
    # made once on the device: a host-to-device copy per character would block on CUDA
    banned_ids = torch.tensor([banned], device=logits.device) if banned is not None else None
    to_array = lambda u: torch.from_numpy(u).to(logits.device)  # noqa: E731
    return draw_loop(step, pick, logits, state, seeds, opts, banned_ids, to_array, history)


def torch_ops(device: torch.device, numpy_on_cpu: bool = True) -> ArrayOps:
    """What the rules' :class:`History` needs of torch, on ``device``. On the CPU the rules run on NumPy
    views of the tensors (a NumPy operation on a small array costs a fraction of a torch one: the rules
    then cost a few percent of a step instead of a third), elsewhere as torch operations."""
    if device.type == "cpu" and numpy_on_cpu:
        return replace(NUMPY_OPS, view=lambda t: t.numpy(), back=torch.from_numpy, ids=lambda t: t.numpy())
    return ArrayOps(
        put=lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device),
        host=lambda t: t.cpu().numpy(),
        view=lambda t: t,
        cat=torch.cat,
        penalize=lambda x, seen, rep: torch.where(seen, torch.where(x > 0, x / rep, x * rep), x),
    )


@torch.no_grad()
def preview(model: CharRNN, vocab: CharVocab, length: int, seed: int, temperature: float = DEFAULT_TEMPERATURE) -> str:
    """A short sample from a model in training, to show progress; drawn from its own seed, so the
    training RNG is never touched."""
    was_training = model.training
    model.eval()
    logits, state = model(torch.tensor([[vocab.start_id]], device=model.embedding.weight.device))
    step = FastStep(model)
    out = list(
        sample_ids(
            step,
            logits[:, -1],
            step.to_fast(state),
            np.array([seed], dtype=np.uint64),
            SampleOptions(length=length, temperature=temperature),
            banned=vocab.unk_id,
        )
    )
    model.train(was_training)
    return vocab.decode(torch.cat(out)) if out else ""


def pick(
    logits: torch.Tensor,
    u: torch.Tensor | None,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    banned: int | torch.Tensor | None,
    min_p: float | None = None,
) -> torch.Tensor:
    """Next ids (B,) from logits (B, V): greedy at temperature 0 (or top-k 1, min-p 1), else inverse-CDF
    sampling with u (B,) after temperature, top-k, top-p and min-p."""
    if banned is not None:  # never emit the unknown token
        if not isinstance(banned, torch.Tensor):
            banned = torch.tensor([banned], device=logits.device)
        logits = logits.index_fill(-1, banned, float("-inf"))
    if temperature == 0 or top_k == 1 or min_p == 1:
        return logits.argmax(dim=-1)
    logits = logits.double()
    if temperature != 1.0:
        # Shift the maximum to 0 before dividing: a tiny temperature then sends every other logit to
        # -inf (greedy in the limit) instead of overflowing the maximum to +inf (NaN probabilities).
        logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    if top_p is not None and top_p < 1.0:
        # A stable sort: among tied probabilities at the cut, the lower ids stay, on every device.
        sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
        before = sorted_p.cumsum(dim=-1) - sorted_p  # mass strictly before each
        sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)  # the first always stays
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    if min_p:  # after top-p, as vLLM: the likeliest character always stays
        probs = probs.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, 0.0)
    cdf = probs.cumsum(dim=-1)  # (B, V)
    total = cdf[:, -1:]
    assert u is not None  # draw_loop gives uniforms whenever it does not pick greedily
    # Strictly below the total, so the first id whose cdf exceeds the target always has
    # probability > 0 (a zero-probability id repeats the cdf before it and is skipped).
    target = torch.minimum(u.to(cdf)[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True)[:, 0]


class HostCopy:
    """Small tensors between the host and a device, one copy each way per call. On CUDA through pinned
    (page-locked) buffers, which the GPU copies from directly; a pageable copy stages through a bounce
    buffer first. On the CPU, no copy at all. Each thread has buffers of its own (a sampler is shared)."""

    def __init__(self, device: torch.device):
        self.device, self.pinned = device, device.type == "cuda"
        self._mine = threading.local()

    def _buffer(self, which: str, n: int, dtype: torch.dtype) -> torch.Tensor:
        held = getattr(self._mine, which, None)
        if held is None or held.numel() < n or held.dtype != dtype:
            held = torch.empty(max(n, 1024), dtype=dtype, pin_memory=True)
            setattr(self._mine, which, held)
        return held

    def read(self, t: torch.Tensor) -> np.ndarray:
        """``t`` on the host as a NumPy array (the device is waited for once): on CUDA a copy of its own,
        on the CPU a view of ``t``."""
        if not self.pinned:
            return t.detach().cpu().numpy()
        out = self._buffer("down", t.numel(), t.dtype)[: t.numel()]
        out.copy_(t.detach().reshape(-1), non_blocking=True)
        torch.cuda.current_stream(t.device).synchronize()
        return out.numpy().reshape(t.shape).copy()

    def write(self, a: np.ndarray) -> torch.Tensor:
        """``a`` on the device. The copy is queued, not waited for: the pinned buffer is not written again
        before the next :meth:`read`, which waits for it (the batcher reads once per step)."""
        t = torch.from_numpy(np.ascontiguousarray(a))
        if not self.pinned:
            return t.to(self.device)
        staged = self._buffer("up", t.numel(), t.dtype)[: t.numel()]
        staged.copy_(t.reshape(-1))
        return staged.to(self.device, non_blocking=True).view(t.shape)


class TorchRuntime:
    """The sampler's torch backend: a model on a device, primed with one ``nn.LSTM``/``nn.GRU`` call over
    the prompt, then one :class:`FastStep` per character (``numpy_step.NumpyRuntime`` has the same methods)."""

    name = "torch"

    def __init__(self, model: CharRNN, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.step = FastStep(self.model)
        self.host = HostCopy(self.device)
        # Steps drawn between two reads of their ids when stop strings are watched or text streamed: on
        # CUDA a read waits for the queue to drain, so 32 steps are read in one copy (a stop is found up to
        # 31 steps late, and the text cut at it all the same); on the CPU each step is read as it comes.
        self.read_every = 32 if self.device.type == "cuda" else 1
        self.ops = torch_ops(self.device)

    def __getstate__(self) -> dict[str, Any]:
        """What a pickle holds (the server's decoding process is sent one): the model's config and its
        weights copied to the CPU, and the device's name. The process that unpickles it moves them to the
        device itself; pickling CUDA tensors would send CUDA IPC handles into this process's memory. The
        step is made again from the weights, unless it was replaced (``Sampler.fast_step``): a custom
        step is pickled as it is."""
        weights = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        custom = None if type(self.step) is FastStep else self.step
        return {"config": self.model.config, "weights": weights, "device": str(self.device), "step": custom}

    def __setstate__(self, state: dict[str, Any]) -> None:
        from ..model.devices import resolve_device

        resolve_device(state["device"])  # a ChargenError where that device is not here
        model = CharRNN(state["config"])
        model.load_state_dict(state["weights"])
        self.__init__(model, state["device"])  # type: ignore[misc]  # the one place that builds a runtime
        if state["step"] is not None:
            self.step = state["step"]

    @torch.inference_mode()
    def prime(self, ids: np.ndarray, batch: int) -> tuple[torch.Tensor, FastState]:
        """Logits (batch, V) after ``ids`` ([start, prompt]), read in one forward call, and the state."""
        x = torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(self.device)[None, :]
        h, state = self.model.features(x)  # (1, T, H)
        logits = self.model.logits(h[:, -1]).expand(batch, -1).contiguous()  # (batch, V)
        if isinstance(state, tuple):
            state = tuple(s.expand(-1, batch, -1).contiguous() for s in state)
        else:
            state = state.expand(-1, batch, -1).contiguous()
        return logits, self.step.to_fast(state)

    def sample(
        self,
        logits: torch.Tensor,
        state: FastState,
        seeds: np.ndarray,
        opts: SampleOptions,
        banned: int | None,
        history: History | None = None,
    ) -> Iterator[torch.Tensor]:
        return sample_ids(self.step, logits, state, seeds, opts, banned, history)

    @staticmethod
    def repeat(logits: torch.Tensor, state: FastState, batch: int) -> tuple[torch.Tensor, FastState]:
        """One row's logits and state as ``batch`` rows (new tensors: the row's are left as they are)."""
        return logits.expand(batch, -1).contiguous(), [
            [x.expand(batch, -1).contiguous() for x in layer] for layer in state
        ]

    def host_logits(self, logits: torch.Tensor) -> np.ndarray:
        """Logits (B, V) on the host as float64 (the beam search reads them there)."""
        return self.host.read(logits).astype(np.float64)

    def select(self, state: FastState, rows: np.ndarray) -> FastState:
        """The state of the rows ``rows``, in that order."""
        index = torch.from_numpy(rows).to(self.device)
        return [[x.index_select(0, index) for x in layer] for layer in state]

    def advance(self, ids: np.ndarray, state: FastState) -> tuple[torch.Tensor, FastState]:
        """One step from host ids (B,): the next logits and state."""
        return self.step(self.host.write(ids), state)

    def to_numpy(self, columns: list) -> np.ndarray:
        """The drawn ids, one tensor (B,) per step -> (B, steps), copied off the device once."""
        return self.host.read(torch.stack(columns, dim=1))

    def scorer(self, start_id: int) -> Callable[[np.ndarray], np.ndarray]:
        """A function of ids (t,) -> log-probabilities (t,) float64, the state carried between calls."""
        from ..model.scoring import StreamScorer

        scorer = StreamScorer(self.model, torch.tensor([start_id], device=self.device))

        @torch.inference_mode()
        def score(targets: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(np.asarray(targets, dtype=np.int64)).to(self.device)[None, :]
            return scorer(x)[0].cpu().numpy()

        return score
