"""Validation loss: exact over every character, and (issue 8, item 6) independent of the evaluation
batch size, because every stream starts from a state warmed on the characters before it."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import chargen
from chargen import Sampler
from chargen.model.scoring import WARMUP, Sample, streams_loss


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "its", "home"]
    text = "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) + "." for _ in range(1500))
    (d / "t.txt").write_text(text + "\n")
    cache = d / "cache"
    chargen.train(
        d / "t.txt",
        out=d / "run",
        cache_dir=cache,
        max_steps=80,
        num_layers=1,
        hidden_size=32,
        batch_size=8,
        bptt=32,
        lr=1e-2,
        warmup_steps=0,
        preview_chars=0,
        eval_every=1000,
    )
    corpus = chargen.prepare(d / "t.txt", cache_dir=cache)
    return Sampler.load(d / "run", backend="torch").model, np.asarray(corpus.train), np.asarray(corpus.val)


def reference(model, train_ids, val, sample, warmup=WARMUP) -> tuple[float, int]:
    """Each segment scored alone, the plain way: the model reads the text from ``warmup`` ids before
    the segment to its end in one call, and the segment's own targets are summed."""
    text = np.concatenate([train_ids, val]).astype(np.int64)
    total, count = 0.0, 0
    for i, s in enumerate(sample.starts):
        s = int(s) + len(train_ids)
        e = s + sample.scored(i)
        lo = max(s - warmup - 1, 0)
        with torch.no_grad():
            logits, _ = model(torch.from_numpy(text[lo : e - 1])[None])
        lp = torch.log_softmax(logits[0].double(), -1).gather(1, torch.from_numpy(text[lo + 1 : e])[:, None])[:, 0]
        total -= float(lp[s - lo - 1 :].sum())
        count += e - s
    return total, count


@pytest.mark.parametrize("chars", [None, 5000, 1500, 1])
@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_every_segment_scores_what_it_scores_alone(trained, chars, batch_size):
    model, train_ids, val = trained
    sample = Sample.plan(len(val), chars)
    total, n = streams_loss(model, val, train_ids, batch_size=batch_size, chunk=50, chars=chars)
    want_total, want_n = reference(model, train_ids, val, sample)
    assert n == want_n == sample.count
    assert total == pytest.approx(want_total, rel=1e-6)


def test_a_sample_of_every_character_is_the_full_evaluation(trained):
    model, train_ids, val = trained
    full = streams_loss(model, val, train_ids)
    assert streams_loss(model, val, train_ids, chars=len(val)) == full
    assert streams_loss(model, val, train_ids, chars=10**9) == full
    assert full[1] == len(val)


@pytest.mark.parametrize("n", [1, 7, 1023, 1024, 5000, 32768, 100_000, 131_072, 10**6, 10**8])
@pytest.mark.parametrize("chars", [None, 1, 1000, 65536, 131072, 10**6])
def test_the_sample_is_spread_over_the_split_without_overlap(n, chars):
    sample = Sample.plan(n, chars)
    starts, L = sample.starts, sample.length
    assert len(starts) and 1 <= L <= 4096
    assert starts[0] == 0 or not sample.whole
    assert (np.diff(starts) >= L).all() and starts[0] >= 0 and starts[-1] < n
    want = n if chars is None else min(chars, n)
    assert sample.count == want  # exactly as many as asked for (the last segment is cut short)
    tiled = starts[0] == 0 and (np.diff(starts) == L).all()
    if sample.whole or len(starts) * L >= n:
        assert tiled  # all of the split, or too much of it to spread: tiled from its start
    elif len(starts) > 1:
        assert starts[0] == 0 and starts[-1] == n - L  # from one end of the split to the other
    else:
        assert starts[0] == (n - L) // 2  # one segment: the middle of the split
    again = Sample.plan(n, chars)
    assert again.length == L and (again.starts == starts).all()


def test_the_figure_does_not_depend_on_the_evaluation_batch_size(trained):
    model, train_ids, val = trained
    loss = {
        B: (lambda t: t[0] / t[1])(
            streams_loss(model, val, train_ids, batch_size=B, chunk=32, device=torch.device("cpu"))
        )
        for B in (1, 4, 32)
    }
    assert abs(loss[4] - loss[1]) < 1e-3 and abs(loss[32] - loss[1]) < 1e-3, loss
    cold = {
        B: (lambda t: t[0] / t[1])(
            streams_loss(model, val, train_ids, batch_size=B, chunk=32, warmup=0, device=torch.device("cpu"))
        )
        for B in (1, 32)
    }
    assert abs(cold[32] - cold[1]) > abs(loss[32] - loss[1])  # what the warm-up fixes
