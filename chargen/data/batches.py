"""Batches for training: contiguous streams for stateful TBPTT, or random windows.

``StatefulStreams`` cuts the ids into B streams that are read side by side,
T columns at a time; the state a batch ends with is the right state to start
the next one with, because batch k+1 continues each stream exactly where
batch k stopped::

    ids:     a b c d e f g h i j k l m n o p q r s t u v w x (y)
    B = 3, T = 3, S = (N - 1) // B = 8 characters per stream

                batch 0   batch 1   (the last 2 columns are dropped: S // T = 2)
    stream 0:   a b c  |  d e f  |  g h
    stream 1:   i j k  |  l m n  |  o p
    stream 2:   q r s  |  t u v  |  w x
    targets are the same grid shifted by one character (stream 0: b c d | e f g)

Both layouts are pure functions of the step number, so a resumed run draws
exactly the batches it would have drawn, and both read a memory map without
loading the corpus: only the rows of the current batch are touched.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import ChargenError

if TYPE_CHECKING:
    from .prepared import IdsReader


def _read_rows(ids: np.ndarray | IdsReader, starts: Iterable[int], length: int) -> np.ndarray:
    """(len(starts), length) ids: ``ids[s:s + length]`` for each start (an array or an IdsReader)."""
    return np.stack([np.asarray(ids[int(s) : int(s) + length]) for s in starts])


def _to_device_source(
    ids: np.ndarray | IdsReader, count: int, device: torch.device, on_device: bool | None
) -> torch.Tensor | None:
    """Keep ids where they are on CPU; copy the first ``count`` to an accelerator once when they fit."""
    if device.type == "cpu" or on_device is False:
        return None
    # Ids are small (1-4 bytes each); a corpus that fits in a quarter of free memory goes up.
    if on_device is None and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if count * 4 > free // 4:
            return None
    return upload_ids(ids, device, count)


def upload_ids(
    ids: np.ndarray | IdsReader, device: torch.device, count: int | None = None, chunk: int = 1 << 24
) -> torch.Tensor:
    """Copy the first ``count`` ids (all by default; an array, a memory map or an IdsReader) to ``device``
    a chunk at a time, so host memory stays flat in their number.

    uint8 ids go up as they are; wider ones as int32, because torch's uint16/uint32 tensors support
    too few operations (no indexing on CUDA in older releases) and int64 would double the memory.
    Batches are widened to int64, which nn.Embedding needs, one (B, T) slice at a time.
    """
    np_dtype, dtype = (np.uint8, torch.uint8) if ids.dtype == np.uint8 else (np.int32, torch.int32)
    count = len(ids) if count is None else count
    out = torch.empty(count, dtype=dtype, device=device)
    for lo in range(0, count, chunk):
        hi = min(lo + chunk, count)
        out[lo:hi].copy_(torch.from_numpy(np.asarray(ids[lo:hi], dtype=np_dtype)))
    _drop_pages(ids)
    return out


def _drop_pages(ids: np.ndarray | IdsReader) -> None:
    """Let the kernel take back the pages of a memory map read once through (they count as this
    process's memory while mapped); the file is untouched and pages come back if read again."""
    mapping = getattr(ids, "_mmap", None)
    if mapping is None or not hasattr(mapping, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    try:
        mapping.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):
        pass


class StatefulStreams:
    """B contiguous streams of the ids, T steps per batch (see the module doc).

    ``get(step)`` returns ``(inputs, targets, starts)``: inputs and targets are
    int64 tensors (B_local, T) on ``device``; ``starts`` is True when the
    batch begins a new pass over the streams (step 0 and every epoch start), so
    the trainer resets the carried state there.

    With W processes, rank r owns streams ``[r*B/W, (r+1)*B/W)``; B counts
    the streams of all ranks together and must be a multiple of W.
    """

    def __init__(
        self,
        ids: np.ndarray | IdsReader,
        batch_size: int,
        bptt: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        ids_on_device: bool | None = None,
    ):
        if batch_size < 1 or bptt < 1:
            raise ChargenError("batch size and bptt must be at least 1")
        if world_size < 1 or not (0 <= rank < world_size):
            raise ValueError(f"rank {rank} is not in a world of {world_size}")
        if batch_size % world_size:
            raise ChargenError(f"batch size {batch_size} must be a multiple of the {world_size} processes")
        n = len(ids)
        needed = batch_size * bptt + 1
        if n < needed:
            raise ChargenError(
                f"corpus split too short for one batch: {n:,} characters, but batch size "
                f"{batch_size} x bptt {bptt} needs at least {needed:,}; use a longer text or a "
                "smaller --batch-size/--bptt"
            )
        self.batch_size, self.bptt = batch_size, bptt
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.stream_len = (n - 1) // batch_size  # S
        self.batches_per_epoch = self.stream_len // bptt
        local = batch_size // world_size
        self.rows = slice(rank * local, (rank + 1) * local)
        S = self.stream_len
        self.ids, self._x = ids, None
        dev = _to_device_source(ids, batch_size * S + 1, self.device, ids_on_device)
        if dev is not None:  # (B, S) views on the device: inputs, and targets one character on
            self._x = dev[: batch_size * S].view(batch_size, S)
            self._y = dev[1:].view(batch_size, S)

    def __len__(self) -> int:
        return self.batches_per_epoch

    @property
    def chars_per_batch(self) -> int:
        """Characters this rank consumes per batch."""
        return (self.rows.stop - self.rows.start) * self.bptt

    def get(self, step: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        k = step % self.batches_per_epoch
        T = self.bptt
        if self._x is not None:
            cols = slice(k * T, (k + 1) * T)
            return self._x[self.rows, cols].long(), self._y[self.rows, cols].long(), k == 0
        # T + 1 ids of each of this rank's streams, read where they are (B small reads, no copy of the split)
        w = _read_rows(self.ids, [r * self.stream_len + k * T for r in range(self.rows.start, self.rows.stop)], T + 1)
        return _as_long(w[:, :-1], self.device), _as_long(w[:, 1:], self.device), k == 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, bool]]:
        """One epoch, in order."""
        for step in range(self.batches_per_epoch):
            yield self.get(step)


class RandomWindows:
    """Windows of T+1 characters at seeded random offsets, for stateless training.

    ``get(step)`` returns ``(inputs, targets, True)``: every batch starts from
    the zero state. Offsets depend only on ``(seed, step, rank)``.
    """

    def __init__(
        self,
        ids: np.ndarray | IdsReader,
        batch_size: int,
        bptt: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        ids_on_device: bool | None = None,
    ):
        if batch_size < 1 or bptt < 1:
            raise ChargenError("batch size and bptt must be at least 1")
        if batch_size % world_size:
            raise ChargenError(f"batch size {batch_size} must be a multiple of the {world_size} processes")
        if len(ids) < bptt + 1:
            raise ChargenError(
                f"corpus split too short: {len(ids):,} characters, but bptt {bptt} "
                f"needs at least {bptt + 1:,}; use a longer text or a smaller --bptt"
            )
        self.ids, self.batch_size, self.bptt, self.seed = ids, batch_size, bptt, seed
        self.rank, self.world_size = rank, world_size
        self.local = batch_size // world_size
        self.device = torch.device(device)
        self._dev = _to_device_source(ids, len(ids), self.device, ids_on_device)
        self._span = np.arange(bptt + 1)
        self.batches_per_epoch = max(1, (len(ids) - 1) // (batch_size * bptt))

    def __len__(self) -> int:
        return self.batches_per_epoch

    @property
    def chars_per_batch(self) -> int:
        return self.local * self.bptt

    def offsets(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, len(self.ids) - self.bptt, size=self.batch_size)
        return starts[self.rank * self.local : (self.rank + 1) * self.local]

    def get(self, step: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        index = self.offsets(step)[:, None] + self._span  # (B, T+1)
        if self._dev is not None:
            w = self._dev[torch.from_numpy(index).to(self.device)].long()
        else:
            w = torch.from_numpy(_read_rows(self.ids, index[:, 0], self.bptt + 1).astype(np.int64))
        return w[:, :-1], w[:, 1:], True


def _as_long(a: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.long()
    t = torch.from_numpy(np.ascontiguousarray(a).astype(np.int64))
    return t.to(device, non_blocking=True) if device.type != "cpu" else t
