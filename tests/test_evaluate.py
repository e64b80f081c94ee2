"""Validation loss: exact over every character, and (issue 8, item 6) independent of the evaluation
batch size, because every stream starts from a state warmed on the characters before it."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import chargen
from chargen import Sampler
from chargen.evaluate import streams_loss


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "its", "home"]
    text = "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) + "." for _ in range(1500))
    (d / "t.txt").write_text(text + "\n")
    cache = d / "cache"
    chargen.train(d / "t.txt", out=d / "run", cache_dir=cache, max_steps=80, num_layers=1, hidden_size=32,
                  batch_size=8, bptt=32, lr=1e-2, warmup_steps=0, preview_chars=0, eval_every=1000)
    corpus = chargen.prepare(d / "t.txt", cache_dir=cache)
    return Sampler.load(d / "run").model, np.asarray(corpus.train), np.asarray(corpus.val)


def test_one_stream_without_warmup_is_the_exact_whole_sequence_loss(trained):
    model, train_ids, val = trained
    total, n = streams_loss(model, val, train_ids, batch_size=1, chunk=64, warmup=0, device=torch.device("cpu"))
    x = torch.from_numpy(np.concatenate([train_ids[-1:], val[:-1]]).astype(np.int64))[None]
    with torch.no_grad():
        logits, _ = model(x)
    expected = -torch.log_softmax(logits[0].double(), -1).gather(1, torch.from_numpy(val.astype(np.int64))[:, None]).sum()
    assert n == len(val)
    assert total == pytest.approx(float(expected), rel=1e-6)


def test_the_figure_does_not_depend_on_the_evaluation_batch_size(trained):
    model, train_ids, val = trained
    loss = {B: (lambda t: t[0] / t[1])(streams_loss(model, val, train_ids, batch_size=B, chunk=32,
                                                     device=torch.device("cpu")))
            for B in (1, 4, 32)}
    assert abs(loss[4] - loss[1]) < 1e-3 and abs(loss[32] - loss[1]) < 1e-3, loss
    cold = {B: (lambda t: t[0] / t[1])(streams_loss(model, val, train_ids, batch_size=B, chunk=32, warmup=0,
                                                     device=torch.device("cpu")))
            for B in (1, 32)}
    assert abs(cold[32] - cold[1]) > abs(loss[32] - loss[1])  # what the warm-up fixes
