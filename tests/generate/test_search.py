"""Best-of-N and beam search (issue 33, item 1)."""

import itertools

import numpy as np
import pytest
from test_sampler import make_sampler

from chargen import ChargenError, SampleOptions
from chargen.generate.search import beam_search, best_of, continuation_logprob


@pytest.fixture(scope="module", params=["lstm-torch", "gru-torch", "lstm-numpy", "gru-numpy"])
def sampler(request):
    cell, backend = request.param.split("-")
    return make_sampler(cell, backend=backend)


@pytest.mark.parametrize(
    "settings", [dict(), dict(stop=("e",)), dict(stop=("oo", "?")), dict(repetition_penalty=1.5, logit_bias={"o": -2})]
)
def test_a_beam_of_width_1_is_greedy(sampler, settings):
    greedy = sampler.generate("the ", length=150, temperature=0, **settings)
    assert sampler.generate("the ", length=150, beam=1, **settings) == greedy
    assert sampler.generate("the ", length=150, beam=1, temperature=1.5, seed=4, **settings) == greedy


def _exhaustive(s, prompt: str, length: int) -> list[tuple[str, float]]:
    """Every continuation of ``length`` characters with its total log-probability, best first."""
    ids = s.encode(prompt)
    scored = [
        ("".join(t), continuation_logprob(s, ids, "".join(t))) for t in itertools.product(s.vocab.chars, repeat=length)
    ]
    return sorted(scored, key=lambda pair: -pair[1])


def test_a_beam_as_wide_as_the_vocabulary_finds_the_best_two_characters(sampler):
    best = _exhaustive(sampler, "th", 2)[:3]
    found = beam_search(sampler, "th", SampleOptions(length=2, beam=len(sampler.vocab), n=3))
    assert [t for t, _ in found] == [t for t, _ in best]
    np.testing.assert_allclose([v for _, v in found], [v for _, v in best], rtol=1e-5)


def test_beam_texts_are_best_first_and_scored_as_the_model_scores_them(sampler):
    found = beam_search(sampler, "the ", SampleOptions(length=40, beam=5, n=5))
    scores = [v for _, v in found]
    assert scores == sorted(scores, reverse=True) and len({t for t, _ in found}) == 5
    ids = sampler.encode("the ")
    np.testing.assert_allclose(scores, [continuation_logprob(sampler, ids, t) for t, _ in found], rtol=1e-5)
    wider = beam_search(sampler, "the ", SampleOptions(length=40, beam=12, n=1))
    assert wider[0][1] >= found[0][1] - 1e-9  # a wider beam finds nothing worse here


def test_a_beam_ends_at_stop_strings_and_never_shows_them(sampler):
    texts = sampler.generate("the ", length=80, beam=4, n=4, stop=("e", "o"))
    assert len(texts) == 4 and all("e" not in t and "o" not in t for t in texts)
    assert sampler.generate("the ", length=0, beam=3, n=2) == ["", ""]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "mingru", "minlstm"])
def test_the_backends_search_alike(cell):
    t, n = make_sampler(cell, backend="torch"), make_sampler(cell, backend="numpy")
    for settings in (dict(beam=4, n=2), dict(beam=3, stop=("e",)), dict(best_of=6, n=2, seed=8, temperature=1.2)):
        assert t.generate("and ", length=60, **settings) == n.generate("and ", length=60, **settings)


@pytest.mark.parametrize("n,k", [(1, 5), (3, 8), (2, 2)])
def test_best_of_keeps_the_likeliest_of_the_samples_it_drew(sampler, n, k):
    drawn = sampler.generate("the ", length=50, n=k, seed=21, temperature=1.3)
    drawn = [drawn] if isinstance(drawn, str) else drawn
    ids = sampler.encode("the ")
    totals = {text: continuation_logprob(sampler, ids, text) for text in drawn}
    kept = best_of(sampler, "the ", SampleOptions(length=50, n=n, best_of=k, seed=21, temperature=1.3))
    assert [t for t, _ in kept] == sorted(drawn, key=lambda t: -totals[t])[:n]
    assert min(v for _, v in kept) >= max(sorted(totals.values(), reverse=True)[n:], default=-np.inf)
    got = sampler.generate("the ", length=50, n=n, best_of=k, seed=21, temperature=1.3)
    assert (got if n > 1 else [got]) == [t for t, _ in kept]


def test_best_of_with_stops_scores_the_text_returned(sampler):
    kept = best_of(sampler, "", SampleOptions(length=60, n=2, best_of=6, seed=2, stop=("e",)))
    ids = sampler.encode("")
    for text, total in kept:
        assert "e" not in text and total == pytest.approx(continuation_logprob(sampler, ids, text))


@pytest.mark.parametrize(
    "settings,message",
    [
        (dict(best_of=2, n=3), r"best_of \(2\) must be at least n \(3\)"),
        (dict(beam=2, n=3), r"n \(3\) must be at most beam \(2\)"),
        (dict(beam=2, best_of=4), "pass one of them"),
        (dict(beam=0), r"beam must be in \[1, 1024\], got 0"),
        (dict(best_of=0), r"best_of must be in \[1, 65536\], got 0"),
    ],
)
def test_bad_searches_are_one_clear_error(sampler, settings, message):
    with pytest.raises(ChargenError, match=message):
        sampler.generate("a", length=5, **settings)


def test_searches_are_not_streamed(sampler):
    for settings in (dict(beam=2), dict(best_of=3)):
        with pytest.raises(ChargenError, match="cannot be streamed; use generate"):
            sampler.stream("a", length=5, **settings)
    assert "".join(sampler.stream("a", length=5, best_of=1, seed=1)) == sampler.generate("a", length=5, seed=1)
