"""The trainer's evaluations, on rank 0: the run's validation sample scored, the best weights kept, a
preview printed. Under --max-time an evaluation that would not end by the budget's deadline is skipped."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..config import TrainConfig
from ..data.prepared import PreparedCorpus
from ..data.vocab import CharVocab
from ..errors import ChargenError
from ..generate.torch_step import preview
from ..model.network import CharRNN
from ..model.scoring import WARMUP, Autocast, Sample, SampleScorer, mean_loss
from ..runs.checkpoint import ResumeState
from ..runs.metrics import MetricsLog, Timing
from .budget import Budget
from .checkpointing import save_best


def make_scorer(corpus: PreparedCorpus, cfg: TrainConfig, device: torch.device, autocast: Autocast) -> SampleScorer:
    """The scorer of the run's validation sample: the same characters (--eval-chars) at every evaluation."""
    val = corpus.reader("val")
    return SampleScorer(
        val,
        corpus.before("val", WARMUP + 1),
        Sample.plan(len(val), cfg.eval_chars or None),
        batch_size=cfg.eval_batch_size,
        device=device,
        autocast=autocast,
    )


class Evaluation:
    """Validation during training: scores, the best weights, the preview, and skips under --max-time.

    ``progress`` (the run's ResumeState) is passed in at each call and its best-so-far fields updated;
    ``timing.evaluation`` records how long the last evaluation took, for the budget's estimates.
    """

    def __init__(
        self,
        scorer: SampleScorer,
        budget: Budget,
        cfg: TrainConfig,
        vocab: CharVocab,
        log: MetricsLog,
        timing: Timing,
        diverged: Callable[[str], ChargenError],
    ):
        self.scorer, self.budget, self.cfg, self.vocab, self.log, self.timing = scorer, budget, cfg, vocab, log, timing
        self.diverged = diverged  # the error that stops a run whose validation loss is not a number
        self.skipping = False  # --max-time: the last evaluation due was skipped

    def __call__(self, model: CharRNN, progress: ResumeState, run_dir: Path, row: dict, final: bool = False) -> bool:
        """Validate at ``progress.step`` into the metrics ``row``, keep the best weights, print a preview.
        An evaluation that would not end in time (leaving room for the final one, unless it is the final
        one) is skipped, with an event in the metrics (once in a row of skips). Whether it ran."""
        if not len(self.scorer.ids):
            save_best(model, run_dir, progress)  # no validation split: the latest weights are the best we know
            return False
        began, deadline = time.perf_counter(), self.budget.eval_deadline(final)
        result = None
        if deadline is None or began + self.budget.eval_estimate() <= deadline:
            result = self.scorer(model, deadline)
        if result is None:
            assert deadline is not None  # only a deadline makes an evaluation give up
            self._skipped(progress.step, deadline - began)
            return False
        self.skipping = False
        loss, bpc = mean_loss(*result)
        if not math.isfinite(loss):  # finite weights that score no better than NaN: never the best, and no preview
            raise self.diverged(f"the validation loss is {loss} at step {progress.step}")
        row.update(val_loss=round(loss, 5), val_bpc=round(bpc, 5), val_chars=result[1])
        if progress.best_val_loss is None or loss < progress.best_val_loss:
            progress.best_val_loss, progress.best_step, progress.evals_since_best = loss, progress.step, 0
            save_best(model, run_dir, progress)
        else:
            progress.evals_since_best += 1
        self._report(model, progress.step, loss, bpc)
        self.timing.evaluation = time.perf_counter() - began
        row.update(eval_s=round(self.timing.evaluation, 3))
        return True

    def _skipped(self, step: int, left: float) -> None:
        if not self.skipping:
            self.log.event(
                step, "eval_skipped", reason="time", estimate=round(self.budget.eval_estimate(), 3), left=round(left, 3)
            )
        self.skipping = True

    def _report(self, model: CharRNN, step: int, loss: float, bpc: float) -> None:
        """Print the validation loss, and a preview drawn from its own seed (a resume draws the same)."""
        message = f"step {step}: val {loss:.4f} nats/char ({bpc:.4f} bpc)"
        if self.cfg.preview_chars:
            text = preview(model, self.vocab, self.cfg.preview_chars, seed=self.cfg.seed + step)
            message += f"\n--- sample ---\n{text}\n--------------"
        self.log.say(message)
