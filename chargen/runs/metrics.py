"""What a training run reports: ``metrics.jsonl``, messages on stderr, and throughput between log lines.

``metrics.jsonl`` holds one JSON object per line: a log line (step, loss, lr,
grad_norm, chars_per_sec, elapsed, and val_loss/val_bpc after an evaluation)
or an event (step, event, and its fields: skipped non-finite steps, why the
run stopped). Only the main process writes.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from ..files import write_text
from .folder import metrics_row


class MetricsLog:
    """``metrics.jsonl`` of a run, and the run's messages (through the progress bar when there is one)."""

    def __init__(self, run_dir: Path, is_main: bool):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.is_main = is_main
        self._file: TextIO | None = None
        self.bar: ProgressBar | None = None  # a tqdm bar, while one is shown

    def open(self) -> None:
        if self.is_main:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open across steps, closed by close()

    def write(self, row: dict) -> None:
        if self._file is not None:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()

    def event(self, step: int, name: str, **fields: Any) -> None:
        self.write({"step": step, "event": name, **fields})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def say(self, text: str) -> None:
        """A message for the user, on stderr (main process only)."""
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def truncate(self, step: int) -> None:
        """Drop the lines written after ``step`` by a run that died before its next checkpoint."""
        if not self.is_main or not self.path.is_file():
            return
        keep, damaged = [], 0
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            row = metrics_row(line)
            if row is None:
                damaged += line.strip() != ""
            elif row["step"] <= step:
                keep.append(json.dumps(row))
        if damaged:
            self.say(f"{self.path}: {damaged} damaged line(s) dropped (not JSON rows); the rest of the log is kept")
        write_text(self.path, "".join(line + "\n" for line in keep))


@dataclass
class Meter:
    """Training loss and throughput since the last log line, and throughput over this process's run."""

    device: torch.device
    # Summed on the device: no host sync per step (line() reads them in one copy). __post_init__ puts them there.
    sums: torch.Tensor = None  # type: ignore[assignment]  # loss sum, finite steps, last finite grad norm
    chars: int = 0
    seconds: float = 0.0
    run_chars: int = 0
    run_seconds: float = 0.0
    last_lr: float = 0.0

    def __post_init__(self) -> None:
        self.sums = torch.tensor([0.0, 0.0, float("nan")], device=self.device)

    def add(
        self,
        loss: torch.Tensor,
        ok: bool | torch.Tensor,
        grad_norm: torch.Tensor,
        lr: float,
        chars: int,
        seconds: float,
    ) -> None:
        """One step: its loss and gradient norm, whether it was taken (a bool, or a bool tensor on the
        device: see guard.py), its learning rate, size and time. Skipped steps count for time only."""
        s = self.sums
        if not isinstance(ok, torch.Tensor):
            ok = torch.tensor(ok, device=s.device)
        taken = torch.stack([s[0] + loss.detach().float(), s[1] + 1, grad_norm.detach().float()])
        s.copy_(torch.where(ok, taken, s))
        self.last_lr = lr
        self.chars += chars
        self.seconds += seconds
        self.run_chars += chars
        self.run_seconds += seconds

    def line(self, step: int, elapsed: float) -> dict:
        """The log line for ``step``; starts the next interval. The wait for the device's queue to drain
        counts as training time (on CUDA the steps only queued their work)."""
        t0 = time.perf_counter()
        loss_sum, steps, norm = self.sums.tolist()
        waited = time.perf_counter() - t0
        self.seconds += waited
        self.run_seconds += waited
        row = dict(
            step=step,
            loss=round(loss_sum / steps, 5) if steps else None,  # None: every step of the interval was skipped
            lr=self.last_lr,
            grad_norm=round(norm, 5),
            chars_per_sec=round(self.chars / max(self.seconds, 1e-9), 1),
            elapsed=round(elapsed, 3),
        )
        self.sums[:2] = 0
        self.chars, self.seconds = 0, 0.0
        return {k: v for k, v in row.items() if v is not None}

    @property
    def chars_per_sec(self) -> float:
        return self.run_chars / max(self.run_seconds, 1e-9)


class Timing:
    """How long the parts of a run take, as last measured: what a --max-time budget must leave room for."""

    def __init__(self, num_parameters: int):
        self.step = 0.0  # the last training step
        self.evaluation: float | None = None  # the last evaluation, preview and best-weights save included
        # The last checkpoint; before the first, a guess from its size (weights and AdamW's two moments,
        # written and flushed at a pessimistic 100 MB/s).
        self.checkpoint = 0.1 + num_parameters * 12 / 100e6


class ProgressBar:
    """A tqdm bar over the run's steps, with loss, throughput and time left after each log line."""

    def __init__(self, total: int | None, initial: int):
        from tqdm import tqdm

        self.total = total
        self.tqdm = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr)

    @classmethod
    def open(cls, show: bool, total: int | None, initial: int) -> ProgressBar | None:
        return cls(total, initial) if show else None

    def update(self, n: int = 1) -> None:
        self.tqdm.update(n)

    def write(self, text: str, file: TextIO = sys.stderr) -> None:
        self.tqdm.write(text, file=file)

    def close(self) -> None:
        self.tqdm.close()

    def show(self, row: dict, max_time: float | None, elapsed: float) -> None:
        """Loss, validation loss, throughput and the time left, from a metrics line."""
        parts = []
        if "loss" in row:
            parts.append(f"loss {row['loss']:.3f}")
        if "val_loss" in row:
            parts.append(f"val {row['val_loss']:.3f}")
        if "chars_per_sec" in row:
            parts.append(f"{row['chars_per_sec'] / 1000:.1f}k chars/s")
        step, left = row["step"], []
        if max_time is not None:
            left.append(max_time - elapsed)
        if self.total is not None and step:
            left.append((self.total - step) * elapsed / step)
        if left:
            s = max(0, int(min(left)))
            parts.append(f"left {s // 60}:{s % 60:02d}")
        self.tqdm.set_postfix_str(", ".join(parts))
