"""What the batcher does with its backend's arrays, for each backend: :class:`TorchArrays` (tensors on any
device, through pinned buffers on CUDA) and :class:`NumpyArrays` (the NumPy backend: no torch anywhere, so a
torch-free install serves). The batcher's loop is written once against these few operations."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np

from ..generate.numpy_step import log_softmax
from ..generate.numpy_step import pick as numpy_pick

__all__ = ["NumpyArrays", "TorchArrays", "arrays_for"]


def arrays_for(runtime: Any) -> NumpyArrays | TorchArrays:
    """The array operations of a sampler's runtime."""
    return TorchArrays(runtime) if runtime.name == "torch" else NumpyArrays()


class NumpyArrays:
    """The batcher's array operations on NumPy arrays (the NumPy backend)."""

    def __init__(self) -> None:
        self.pick: Callable[..., Any] = numpy_pick

    def inference(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def banned(self, unk: int | None) -> Any:
        return unk

    def put(self, a: np.ndarray) -> np.ndarray:
        return a

    def read(self, x: np.ndarray) -> np.ndarray:
        return x

    def cat(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.concatenate([a, b])

    def rows(self, x: np.ndarray, index: list[int]) -> np.ndarray:
        return x[np.asarray(index, dtype=np.int64)]

    def ids(self, n: int) -> np.ndarray:
        return np.empty(n, dtype=np.int64)

    def logprobs(self, logits: np.ndarray, ids: np.ndarray, members: list[int], k: int) -> np.ndarray:
        """The ids, then for the rows ``members``: the drawn ids' log-probabilities, the ``k`` likeliest
        log-probabilities and their ids (as :meth:`TorchArrays.logprobs`), float64 on the host."""
        index = np.asarray(members, dtype=np.int64)
        lp = log_softmax(logits[index].astype(np.float32))
        drawn = lp[np.arange(len(index)), ids[index]]
        order = np.argsort(-lp, axis=-1, kind="stable")[:, :k]
        values = np.take_along_axis(lp, order, axis=-1)
        return np.concatenate([ids, drawn, values.ravel(), order.ravel()]).astype(np.float64)


class TorchArrays:
    """The batcher's array operations on torch tensors, on the runtime's device: one copy each way per step
    (``HostCopy``: pinned buffers on CUDA)."""

    def __init__(self, runtime: Any):
        import torch

        from ..generate.torch_step import pick

        self.torch, self.device, self.host = torch, runtime.device, runtime.host
        self.pick: Callable[..., Any] = pick

    def inference(self) -> contextlib.AbstractContextManager:
        return self.torch.inference_mode()

    def banned(self, unk: int | None) -> Any:
        # made once on the device, as sample_ids does: a copy to the device each step would wait on CUDA
        return None if unk is None else self.torch.tensor([unk], device=self.device)

    def put(self, a: np.ndarray) -> Any:
        return self.host.write(a)

    def read(self, x: Any) -> np.ndarray:
        return self.host.read(x)

    def cat(self, a: Any, b: Any) -> Any:
        return self.torch.cat([a, b])

    def rows(self, x: Any, index: list[int]) -> Any:
        return x.index_select(0, self.torch.tensor(index, device=x.device))

    def ids(self, n: int) -> Any:
        return self.torch.empty(n, dtype=self.torch.long, device=self.device)

    def logprobs(self, logits: Any, ids: Any, members: list[int], k: int) -> np.ndarray:
        """See :meth:`NumpyArrays.logprobs`: computed on the device, read in one copy (float64 holds the ids
        exactly)."""
        torch = self.torch
        index = torch.tensor(members, device=logits.device)
        lp = torch.log_softmax(logits.index_select(0, index).float(), dim=-1)
        drawn = lp.gather(1, ids.index_select(0, index)[:, None])[:, 0]
        values, indices = lp.topk(k, dim=-1) if k else (lp[:, :0], lp[:, :0].long())
        return self.host.read(torch.cat([p.double() for p in (ids, drawn, values.flatten(), indices.flatten())]))
