"""Scoring a prepared corpus's split as training validates (``Sampler.score_split``): torch, the model's own
scorer over segments warmed on the text before them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ChargenError

if TYPE_CHECKING:
    from ..data.prepared import PreparedCorpus

__all__ = ["score_split"]


def score_split(
    sampler: Any,  # a Sampler (not imported here: the sampler imports this module)
    corpus: PreparedCorpus,
    split: str,
    *,
    batch_size: int,
    chars: int | None,
    progress: bool,
) -> tuple[float, int]:
    """(total log-probability, characters) of the split's sample (see :meth:`Sampler.score_split`)."""
    sampler._torch("score_split")
    from ..model.scoring import WARMUP, Sample, SampleScorer

    if split not in ("train", "val", "test"):
        raise ChargenError(f"split must be train, val or test, got {split!r}")
    if corpus.vocab.chars != sampler.vocab.chars:
        raise ChargenError("this corpus's vocabulary is not the model's; score the corpus the run was trained on")
    ids = corpus.reader(split)
    if len(ids) == 0:
        raise ChargenError(
            f"the corpus {corpus.meta['source']} has no {split} split (0 characters); choose another split"
        )
    scorer = SampleScorer(
        ids,
        corpus.before(split, WARMUP + 1),
        Sample.plan(len(ids), chars),
        batch_size=batch_size,
        device=sampler.device,
    )
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=scorer.sample.count, unit="char", unit_scale=True, leave=False, desc=f"eval {split}")
    try:
        result = scorer(sampler.model, tick=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    assert result is not None  # None only past a deadline or when probing, and neither is asked here
    return result
