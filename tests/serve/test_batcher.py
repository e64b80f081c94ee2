"""Continuous batching (issue 11): a request decoded beside others gets exactly the text Sampler.generate
gives it alone, whatever joins or leaves the batch meanwhile."""

from __future__ import annotations

import random
import shutil
import threading
import time

import pytest

from chargen import ChargenError, Sampler
from chargen.serve.batcher import Batcher, BatcherClosed
from chargen.serve.process_batcher import ProcessBatcher
from conftest import GOLDEN_DIR as GOLDEN
from conftest import FailingStep


@pytest.fixture(scope="module")
def sampler(tmp_path_factory) -> Sampler:
    d = tmp_path_factory.mktemp("b")
    shutil.copytree(GOLDEN / "run", d / "run")
    return Sampler.load(d / "run", backend="torch")


@pytest.fixture(params=["thread", "process"])
def kind(request):
    """Both loops: in a thread of this process, and in a decoding process of its own."""
    return Batcher if request.param == "thread" else ProcessBatcher


def requests(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _i in range(count):
        opts = dict(
            length=rng.choice([0, 1, 5, 40, 120]),
            seed=rng.randrange(1 << 40),
            temperature=rng.choice([0.0, 0.5, 0.8, 1.0, 1.3]),
        )
        if rng.random() < 0.3:
            opts["top_k"] = rng.choice([1, 3, 10])
        if rng.random() < 0.3:
            opts["top_p"] = rng.choice([0.5, 0.9])
        if rng.random() < 0.4:
            opts["stop"] = tuple(rng.sample(["e", "th", "\n", "the "], rng.randint(1, 2)))
        if rng.random() < 0.2:
            opts["n"] = rng.randint(2, 4)
        if rng.random() < 0.4:  # the rules on the logits (issue 33): a row's own, beside rows with others or none
            opts.update(
                rng.choice(
                    [
                        dict(presence_penalty=1.2, frequency_penalty=0.4),
                        dict(repetition_penalty=1.5, repeat_last_n=rng.choice([-1, 3, 16])),
                        dict(logit_bias={"e": -100, " ": 2.0}),
                        dict(min_p=rng.choice([0.1, 1.0])),
                        dict(logit_bias={"t": 3.0}, presence_penalty=-0.5, repetition_penalty=0.8, min_p=0.05),
                    ]
                )
            )
        out.append(dict(prompt=rng.choice(["", "the ", "and so", "k"]), **opts))
    return out


def test_requests_submitted_together_get_their_own_text(sampler, kind):
    batcher = kind(sampler, max_batch=16)
    try:
        reqs = requests(40, 1)
        submitted = [batcher.submit(r.pop("prompt"), **r) for r in [dict(x) for x in reqs]]
        got = [s.texts(timeout=120) for s in submitted]
    finally:
        batcher.close()
    for r, texts in zip(reqs, got):
        want = sampler.generate(r.pop("prompt"), **r)
        assert texts == (want if isinstance(want, list) else [want]), r
    assert batcher.active == 0


def test_requests_from_many_threads_overlapping_in_time(sampler, kind):
    batcher = kind(sampler, max_batch=8)
    reqs, results = requests(24, 2), {}

    def client(i: int, r: dict) -> None:
        r = dict(r)
        results[i] = batcher.generate(r.pop("prompt"), **r)

    threads = [threading.Thread(target=client, args=(i, r)) for i, r in enumerate(reqs)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        batcher.close()
    for i, r in enumerate(reqs):
        r = dict(r)
        assert results[i] == sampler.generate(r.pop("prompt"), **r), reqs[i]


def test_pieces_are_what_stream_yields(sampler, kind):
    batcher = kind(sampler)
    try:
        req = batcher.submit("the ", length=200, seed=5, stop=("ing", "\n\n"))
        events = list(req.iter_events(timeout=60))
        pieces = [value for kind, row, value in events if kind == "text"]
        (end,) = [value for kind, row, value in events if kind == "end"]
    finally:
        batcher.close()
    assert pieces == list(sampler.stream("the ", length=200, seed=5, stop=("ing", "\n\n")))
    assert end in ("stop", "length")


def test_a_cancelled_request_leaves_at_once_and_the_others_go_on(sampler, kind):
    batcher = kind(sampler)
    try:
        long = batcher.submit("the ", length=100_000, seed=1)
        short = batcher.submit("the ", length=50, seed=2)
        events = long.iter_events(timeout=60)
        assert next(events)[0] == "text"  # it has started
        long.cancel()
        assert [value for kind, row, value in events if kind == "end"] == ["cancelled"]
        assert short.texts(timeout=60) == [sampler.generate("the ", length=50, seed=2)]
        assert batcher.active == 0
    finally:
        batcher.close()


def test_bad_options_are_refused_when_submitted(sampler, kind):
    batcher = kind(sampler)
    try:
        with pytest.raises(ChargenError):
            batcher.submit("the", temperature=-1)
        with pytest.raises(ChargenError, match="not in the vocabulary|unknown"):
            batcher.submit("\u2603 snowman")
        assert batcher.generate("the ", length=10, seed=3) == sampler.generate("the ", length=10, seed=3)
    finally:
        batcher.close()


def test_closing_ends_open_rows_as_cancelled_and_refuses_more(sampler, kind):
    batcher = kind(sampler)
    long = batcher.submit("the ", length=1_000_000, seed=4, n=2)
    events = long.iter_events(timeout=60)
    assert next(events)[0] == "text"
    batcher.close()
    assert sorted(value for kind_, row, value in events if kind_ == "end") == ["cancelled", "cancelled"]
    assert batcher.active == 0
    with pytest.raises(BatcherClosed, match="stopped"):
        batcher.submit("the ", length=5)


def test_a_loop_that_fails_ends_every_row_with_error_and_says_why(sampler, kind, monkeypatch):
    monkeypatch.setattr(sampler, "fast_step", FailingStep(sampler.fast_step, at=30))
    batcher = kind(sampler)
    try:
        running = [batcher.submit("the ", length=500, seed=i) for i in range(3)]
        for request in running:
            ends = [value for kind_, row, value in request.iter_events(timeout=60) if kind_ == "end"]
            assert ends == ["error"]
        assert "out of memory (a test)" in batcher.error
        with pytest.raises(BatcherClosed, match="out of memory"):
            batcher.submit("the ", length=5)
        assert batcher.active == 0
    finally:
        batcher.close()


def test_a_decoding_process_that_dies_ends_its_rows_with_error(sampler):
    batcher = ProcessBatcher(sampler)
    try:
        long = batcher.submit("the ", length=1_000_000, seed=4)
        events = long.iter_events(timeout=60)
        assert next(events)[0] == "text"
        batcher._process.kill()
        assert [value for kind_, row, value in events if kind_ == "end"] == ["error"]
        assert batcher.error == "the decoding process exited, killed by signal 9" and batcher.active == 0
        with pytest.raises(BatcherClosed, match="exited"):
            batcher.submit("the ", length=5)
    finally:
        batcher.close()


def test_logprobs_come_one_per_character_beside_the_same_text(sampler, kind):
    batcher = kind(sampler)
    try:
        plain = batcher.submit("the ", length=80, seed=6, stop=("he",), n=2)
        asked = batcher.submit("the ", length=80, seed=6, stop=("he",), n=2, logprobs=4)
        with pytest.raises(ChargenError, match="logprobs must be a whole number"):
            batcher.submit("the ", length=5, logprobs=-1)
        events = list(asked.iter_events(timeout=60))
        assert plain.texts(timeout=60) == [
            "".join(v for k, r, v in events if k == "text" and r == row) for row in range(2)
        ]
    finally:
        batcher.close()
    for row in range(2):
        pairs = [(kind_, value) for kind_, r, value in events if r == row and kind_ in ("text", "logprobs")]
        assert [k for k, _ in pairs] == ["text", "logprobs"] * (len(pairs) // 2)
        for (_, text), (_, entries) in zip(pairs[::2], pairs[1::2]):
            assert len(entries) == len(text) and all(len(top) == 4 for _, top in entries)
        text = "".join(v for k, v in pairs if k == "text")
        drawn = [lp for k, v in pairs if k == "logprobs" for lp, _ in v]
        assert drawn == pytest.approx([float(x) for x in sampler.score("the " + text).logprobs[4:]], abs=1e-4)


def slow_priming(sampler, monkeypatch, longer_than: int, seconds: float = 2.0) -> None:
    """Make reading a prompt of more than ``longer_than`` ids take ``seconds`` (as a long prompt would)."""
    prime = sampler._prime

    def slow_prime(ids, n):
        if len(ids) > longer_than:
            time.sleep(seconds)
        return prime(ids, n)

    monkeypatch.setattr(sampler, "_prime", slow_prime)


def test_a_long_prompt_is_read_beside_the_loop_not_in_its_way(sampler, monkeypatch):
    """Priming takes 2 s here (a long prompt); the rows already decoding go on meanwhile."""
    slow_priming(sampler, monkeypatch, longer_than=300)
    batcher = Batcher(sampler)
    try:
        running = batcher.submit("the ", length=1_000_000, seed=1)
        events = running.iter_events(timeout=60)
        next(events)
        long = batcher.submit("the " * 100, length=20, seed=2)
        start, during = time.monotonic(), 0
        while time.monotonic() - start < 1.5:
            during += next(events)[0] == "text"
        assert during > 50  # the loop kept decoding while the prompt was read
        assert long.texts(timeout=60) == [sampler.generate("the " * 100, length=20, seed=2)]
        running.cancel()
    finally:
        batcher.close()


def test_requests_cancelled_while_they_wait_leave_at_once(sampler, kind):
    batcher = kind(sampler, max_batch=2)
    try:
        running = batcher.submit("the ", length=1_000_000, seed=1, n=2)
        next(running.iter_events(timeout=60))
        waiting = [batcher.submit("the ", length=50, seed=i, n=3) for i in range(3)]
        deadline = time.monotonic() + 30
        while batcher.active < 11 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batcher.active == 11
        for request in waiting:
            request.cancel()
        for request in waiting:
            assert [v for k, r, v in request.iter_events(timeout=10) if k == "end"] == ["cancelled"] * 3
        assert batcher.active == 2
        running.cancel()
    finally:
        batcher.close()


def test_a_long_prompt_cancelled_while_another_is_read_leaves_at_once(sampler, monkeypatch):
    slow_priming(sampler, monkeypatch, longer_than=300)
    batcher = Batcher(sampler)
    try:
        first = batcher.submit("the " * 100, length=5, seed=1)  # read for 2 s
        time.sleep(0.2)
        second = batcher.submit("the " * 100, length=5, seed=2)  # waits its turn
        second.cancel()
        start = time.monotonic()
        assert [v for k, r, v in second.iter_events(timeout=10) if k == "end"] == ["cancelled"]
        assert time.monotonic() - start < 1.0 and batcher.active == 1
        assert first.texts(timeout=30) == [sampler.generate("the " * 100, length=5, seed=1)]
    finally:
        batcher.close()
