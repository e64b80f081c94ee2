"""What ``train`` returns: the run's outcome in a few numbers."""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass

from . import distributed
from .launch import AlreadyFinished


@dataclass
class TrainResult:
    run_dir: str
    steps: int
    best_val_loss: float | None
    best_val_bpc: float | None
    stopped: str  # "budget", "patience", "schedule" (its rate reached 0), "interrupted"
    chars_per_sec: float
    elapsed: float
    main: bool = True  # False on the other processes of a multi-process run
    device: str = "cpu"
    precision: str = "fp32"  # what --precision resolved to (auto: see precision.resolve_precision)
    already_finished: bool = False  # a plain resume of a finished run: nothing was trained

    def finished_message(self) -> str:
        """The one line a resume of a finished run reports."""
        head = f"{self.run_dir} already finished (stopped: {self.stopped} at step {self.steps}): nothing to do; "
        if self.stopped == "schedule":  # its rate is 0: a new budget would be refused
            return head + (
                "its learning rate has reached 0, so to train on, start a new run from its weights: "
                f"chargen train SOURCE --init-from {shlex.quote(self.run_dir)} --out NEW_RUN"
            )
        return head + "to train on, give it a new budget (--max-steps, --epochs or --max-time)"


def finished_result(done: AlreadyFinished) -> TrainResult:
    """The result of a plain resume of a finished run: the run as it stands, nothing trained."""
    info = done.info
    best = info.get("best_val_loss")
    return TrainResult(
        run_dir=str(done.run_dir),
        steps=int(info.get("step", 0)),
        best_val_loss=best,
        best_val_bpc=None if best is None else best / math.log(2),
        stopped=info["stopped"],
        chars_per_sec=0.0,
        elapsed=0.0,
        main=distributed.world_from_env()[0] == 0,
        already_finished=True,
    )
