"""Multi-process training through torch.distributed (DistributedDataParallel).

Launch with PyTorch's own launcher; chargen reads the environment it sets::

    torchrun --nproc_per_node 8 -m chargen train tinyshakespeare --out runs/ts --device cuda

Each process owns ``B / W`` of the B streams (see batches.py), so the hidden
state never crosses processes; DDP averages the gradients, which makes a step
the same as one process's step over all B streams. Rank 0 prepares the corpus
first, writes the run folder, evaluates and logs; the others wait where they
must. With a single process none of this is used.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Literal, TypeVar, overload

import torch

from ..errors import ChargenError

T = TypeVar("T")


def world_from_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def init(device: torch.device) -> tuple[int, int, torch.device]:
    """Join the process group (NCCL on CUDA, gloo on CPU); returns (rank, world, this process's device)."""
    _rank, world, local = world_from_env()
    if world == 1:
        return 0, 1, device
    import torch.distributed as dist

    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ChargenError(
                f"local rank {local} has no GPU ({torch.cuda.device_count()} visible); start fewer processes per node"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ChargenError(f"multi-process training runs on cuda or cpu, not {device.type}")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def wrap_model(model: torch.nn.Module, device: torch.device, world: int) -> torch.nn.Module:
    """DistributedDataParallel with several processes; the model itself otherwise."""
    if world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


@overload
def main_first(world: int, rank: int, fn: Callable[[], T], others: Literal[True] = True) -> T: ...


@overload
def main_first(world: int, rank: int, fn: Callable[[], T], others: bool) -> T | None: ...


def main_first(world: int, rank: int, fn: Callable[[], T], others: bool = True) -> T | None:
    """Run ``fn`` on rank 0, then (if ``others``) on the other ranks; a ChargenError on rank 0
    reaches every rank. Without ``others``, the other ranks get None.

    Used for preparing the corpus (the others then find it cached) and making
    the run folder (rank 0 only), so no process waits forever on one that failed.
    """
    if world == 1:
        return fn()
    import torch.distributed as dist

    result: T | None = None
    message: list[str | None] = [None]
    if rank == 0:
        try:
            result = fn()
        except ChargenError as e:
            message = [str(e)]
    dist.broadcast_object_list(message, src=0)
    if message[0] is not None:
        raise ChargenError(message[0])
    if rank != 0 and others:
        result = fn()
    return result


def broadcast_flags(flags: list[bool], device: torch.device) -> list[bool]:
    """Rank 0's decisions (stop now? interrupted?), the same on every rank, in one broadcast."""
    import torch.distributed as dist

    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.broadcast(t, src=0)
    return [bool(v) for v in t.tolist()]


def mean_and_bad(loss: torch.Tensor, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean loss over ranks, and whether any rank's loss is not finite, both on the device (one
    all-reduce, no host sync)."""
    import torch.distributed as dist

    bad = ~torch.isfinite(loss)
    t = torch.stack([torch.where(bad, torch.zeros_like(loss), loss).float(), bad.float()])
    dist.all_reduce(t)
    return t[0] / world, t[1] > 0


def mean_and_any_bad(loss: torch.Tensor, world: int) -> tuple[torch.Tensor, bool]:
    """:func:`mean_and_bad` with the verdict read back to the host."""
    mean, bad = mean_and_bad(loss, world)
    return mean, bool(bad)


def gather_rows(tensor: torch.Tensor, world: int, dim: int) -> torch.Tensor:
    """Concatenate every rank's tensor along ``dim`` (equal shapes), e.g. per-rank hidden states."""
    import torch.distributed as dist

    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=dim)


def gather_cpu_bytes(tensor: torch.Tensor, world: int) -> list[torch.Tensor]:
    """Every rank's CPU byte tensor (RNG states), through the process group's device."""
    import torch.distributed as dist

    backend_device = (
        torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    )
    t = tensor.to(backend_device)
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t)
    return [p.cpu() for p in parts]


def gather_checkpoint(carried: dict, rng: dict, world: int) -> tuple[dict, dict]:
    """With several processes, the full (L, B, H) carried state and every rank's RNG (as ``key.R``)."""
    if world == 1:
        return carried, rng
    carried = {k: gather_rows(v, world, dim=1) for k, v in carried.items()}
    rng = {f"{k}.{r}": v for k, v in rng.items() for r, v in enumerate(gather_cpu_bytes(v, world))}
    return carried, rng


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
