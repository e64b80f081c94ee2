"""Fast single-step decoding and the sampling rules.

Calling ``nn.LSTM`` once per character costs far more than its arithmetic:
each call validates arguments, picks a kernel and allocates. ``FastStep``
applies the same weights directly: prepared once (the first layer's input
projection becomes a (V, 4H) lookup table, biases are pre-summed), gates
fused into one matmul per layer, under ``inference_mode``. It computes what
``nn.LSTM``/``nn.GRU`` compute, in the same gate order (a test checks it).

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
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import torch

from ..config import DEFAULT_TEMPERATURE, SampleOptions
from ..model.network import AdaptiveHead, CharRNN
from .draws import draw_loop, uniforms, uniforms_at
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
    from ..model.network import RNNState
    from .rules import History

__all__ = ["FastStep", "SampleOptions", "TorchRuntime", "pick", "preview", "sample_ids", "uniforms", "uniforms_at"]

# FastStep's state: per-layer (B, H) tensors, [hs, cs] for an LSTM, [hs] for a GRU.
FastState: TypeAlias = list[list[torch.Tensor]]


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


class FastStep:
    """One recurrent step of a CharRNN with prepared weights.

    The state is kept as a list of per-layer tensors (``to_fast``/``from_fast``
    convert from and to the (L, B, H) layout of nn.LSTM/nn.GRU), so a step
    does no stacking or slicing.
    """

    def __init__(self, model: CharRNN):
        c = model.config
        self.cell, self.L, self.H = c.cell, c.num_layers, c.hidden_size
        H = c.hidden_size
        rnn = model.rnn
        with torch.no_grad():
            emb = model.embedding.weight  # (V, E)
            # LSTM: (input table or bias, weight); GRU: (input part, w_ih or None, w_hh, b_hh)
            self.layers: list[tuple[Any, ...]] = []
            for layer in range(c.num_layers):
                w_ih = getattr(rnn, f"weight_ih_l{layer}")  # (G*H, in)
                w_hh = getattr(rnn, f"weight_hh_l{layer}")  # (G*H, H)
                b_ih = getattr(rnn, f"bias_ih_l{layer}")
                b_hh = getattr(rnn, f"bias_hh_l{layer}")
                if c.cell == "lstm":
                    # tanh(x) = 2 sigmoid(2x) - 1: doubling the g rows lets one sigmoid cover all gates.
                    scale = torch.ones(4 * H, 1, dtype=w_ih.dtype, device=w_ih.device)
                    scale[2 * H : 3 * H] = 2.0
                    if layer == 0:  # input projection of every id, biases folded in: (V, 4H)
                        table = torch.addmm((b_ih + b_hh), emb, w_ih.t()) * scale.t()
                        self.layers.append((table, (w_hh * scale).t().contiguous()))
                    else:  # one matmul over [x, h]: (in + H, 4H)
                        w = (torch.cat([w_ih, w_hh], dim=1) * scale).t().contiguous()
                        self.layers.append(((b_ih + b_hh) * scale[:, 0], w))
                else:  # GRU keeps input and hidden parts apart: r gates only the hidden part of n
                    if layer == 0:
                        self.layers.append((torch.addmm(b_ih, emb, w_ih.t()), None, w_hh.t().contiguous(), b_hh))
                    else:
                        self.layers.append((b_ih, w_ih.t().contiguous(), w_hh.t().contiguous(), b_hh))
            # The adaptive softmax is applied as the model applies it; a full one as one matmul.
            head = model.head  # an AdaptiveHead exactly when the config is adaptive
            self.adaptive = head if isinstance(head, AdaptiveHead) else None
            if not isinstance(head, AdaptiveHead):
                self.head_w = head.weight.t().contiguous()  # (H, V)
                self.head_b = head.bias.clone()
        self.device = model.embedding.weight.device

    def to_fast(self, state: RNNState) -> FastState:
        """(L, B, H) state(s) of nn.LSTM/nn.GRU -> per-layer lists."""
        if isinstance(state, tuple):  # an LSTM's (h, c)
            return [list(state[0].unbind(0)), list(state[1].unbind(0))]
        return [list(state.unbind(0))]

    def from_fast(self, fast: FastState) -> RNNState:
        """Per-layer lists -> the (L, B, H) layout of nn.LSTM/nn.GRU."""
        if self.cell == "lstm":
            return torch.stack(fast[0]), torch.stack(fast[1])
        return torch.stack(fast[0])

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor, fast: FastState) -> tuple[torch.Tensor, FastState]:
        """ids (B,), per-layer state -> logits (B, V), new per-layer state."""
        H = self.H
        x = ids  # each layer's input: the ids for layer 0 (read through its table), then the layer below's output
        if self.cell == "lstm":
            hs, cs = fast
            new_h, new_c = [], []
            for layer, (a, w) in enumerate(self.layers):
                if layer == 0:
                    gates = torch.addmm(a.index_select(0, ids), hs[0], w)  # (B, 4H)
                else:
                    gates = torch.addmm(a, torch.cat([x, hs[layer]], dim=1), w)
                gates = gates.sigmoid_()
                i, f, g, o = gates.split(H, dim=1)
                c = torch.addcmul(f * cs[layer], i, g.mul(2.0).sub_(1.0))  # f*c + i*tanh(g)
                x = o * c.tanh()
                new_h.append(x)
                new_c.append(c)
            fast = [new_h, new_c]
        else:
            (hs,) = fast
            new_h = []
            for layer, (gi_src, w_ih, w_hh, b_hh) in enumerate(self.layers):
                h = hs[layer]
                gi = gi_src.index_select(0, ids) if layer == 0 else torch.addmm(gi_src, x, w_ih)  # (B, 3H)
                gh = torch.addmm(b_hh, h, w_hh)  # (B, 3H)
                i_r, i_z, i_n = gi.split(H, dim=1)
                h_r, h_z, h_n = gh.split(H, dim=1)
                r = torch.sigmoid(i_r + h_r)
                z = torch.sigmoid(i_z + h_z)
                n = torch.tanh(torch.addcmul(i_n, r, h_n))
                x = torch.lerp(n, h, z)  # (1 - z) * n + z * h
                new_h.append(x)
            fast = [new_h]
        if self.adaptive is not None:
            return self.adaptive.log_probs(x), fast  # (B, V)
        return torch.addmm(self.head_b, x, self.head_w), fast  # (B, V)


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
