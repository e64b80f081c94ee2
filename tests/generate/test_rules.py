"""The rules on the logits (issue 33, item 2): logit bias, repetition, presence and frequency penalties, min-p:
each checked against a hand computation, against the softmax by chi-square, and equal on both backends."""

import math

import numpy as np
import pytest
import torch
from test_sampler import ALPHABET, make_sampler, reference_logits

from chargen import ChargenError, SampleOptions
from chargen.generate.rules import NUMPY_OPS, History
from chargen.generate.torch_step import torch_ops

CPU = torch.device("cpu")
# the NumPy backend; the torch backend on the CPU (the rules on NumPy views); and on another device (torch
# operations: CUDA's kernels, run here on the CPU)
OPS = {"numpy": NUMPY_OPS, "torch": torch_ops(CPU), "torch-kernels": torch_ops(CPU, numpy_on_cpu=False)}


def _host(x):
    return x.numpy() if isinstance(x, torch.Tensor) else x


def _tensors(backend, a):
    """Logits or ids ``a`` as the backend hands them to the rules."""
    return a if backend == "numpy" else torch.from_numpy(a)


@pytest.mark.parametrize("backend", sorted(OPS))
def test_each_rule_as_computed_by_hand_on_a_vocabulary_of_four(backend):
    ops = OPS[backend]
    opts = SampleOptions(repetition_penalty=2.0, repeat_last_n=2, presence_penalty=0.5, frequency_penalty=0.25)
    bias = np.array([0.0, 0.0, 0.0, 1.5])
    h = History.start(ops, opts, bias, [1, 2, 1], vocab_size=4, batch=1)
    logits = _tensors(backend, np.array([[2.0, -1.0, 0.5, 0.0]], dtype=np.float32))
    # the window is the prompt's last two characters (2, 1): -1 * 2 and 0.5 / 2; nothing generated yet
    assert _host(h.adjust(logits)).tolist() == [[2.0, -2.0, 0.25, 1.5]]
    h.update(_tensors(backend, np.array([0])))
    h.update(_tensors(backend, np.array([0])))
    # the window is now (0, 0): 2 / 2 = 1, then less 0.25 * 2 (frequency) and 0.5 (presence); 1 and 2 left it
    assert _host(h.adjust(logits)).tolist() == [[0.0, -1.0, 0.5, 1.5]]


@pytest.mark.parametrize("backend", sorted(OPS))
def test_the_window_reaches_back_exactly_repeat_last_n_characters(backend):
    ops = OPS[backend]
    logits = _tensors(backend, np.full((1, 6), 3.0, dtype=np.float32))
    prompt = [0, 1, 2, 3, 4, 5]
    for n in range(0, 8):
        h = History.start(ops, SampleOptions(repetition_penalty=3.0, repeat_last_n=n), None, prompt, 6, 1)
        got = _host(h.adjust(logits))[0]
        assert got.tolist() == [3.0] * (6 - min(n, 6)) + [1.0] * min(n, 6), n
    everything = History.start(ops, SampleOptions(repetition_penalty=3.0, repeat_last_n=-1), None, prompt, 6, 1)
    assert _host(everything.adjust(logits))[0].tolist() == [1.0] * 6


@pytest.mark.parametrize("backend", sorted(OPS))
def test_a_neutral_row_beside_rows_with_rules_is_left_bit_for_bit(backend):
    ops = OPS[backend]
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 9)).astype(np.float32)
    ruled = History.start(ops, SampleOptions(presence_penalty=1.0, repetition_penalty=1.7), np.ones(9), [3, 4], 9, 1)
    neutral = History.start(ops, SampleOptions(), None, [3, 4], 9, 1)
    both = neutral.join(ruled)
    for ids in ([1, 1], [3, 5], [1, 8]):
        out = _host(both.adjust(_tensors(backend, logits)))
        assert out[0].tolist() == logits[0].astype(np.float64).tolist()
        assert out[1].tolist() == _host(ruled.adjust(_tensors(backend, logits[1:])))[0].tolist()
        both.update(_tensors(backend, np.array(ids)))
        ruled.update(_tensors(backend, np.array(ids[1:])))
    one = both.select(ops.put(np.array([1])))
    assert (
        _host(one.adjust(_tensors(backend, logits[1:]))).tolist()
        == _host(ruled.adjust(_tensors(backend, logits[1:]))).tolist()
    )


RULES = [
    dict(presence_penalty=1.5),
    dict(frequency_penalty=0.7, presence_penalty=-0.5),
    dict(repetition_penalty=1.8, repeat_last_n=10),
    dict(repetition_penalty=0.7, repeat_last_n=-1),
    dict(logit_bias={"e": -100, " ": 3.0, "q": -2.5}),
    dict(min_p=0.2),
    dict(min_p=0.05, top_p=0.9, top_k=10, temperature=1.3),
    dict(presence_penalty=0.4, frequency_penalty=0.3, repetition_penalty=1.2, logit_bias={"a": 2.0}, min_p=0.1),
]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "mingru", "minlstm"])
@pytest.mark.parametrize("rules", RULES, ids=lambda r: ",".join(r))
def test_the_backends_give_the_same_text_per_seed_under_every_rule(cell, rules):
    t, n = make_sampler(cell, backend="torch"), make_sampler(cell, backend="numpy")
    for seed in (3, 4):
        a = t.generate("the ", length=120, seed=seed, **rules)
        assert a == n.generate("the ", length=120, seed=seed, **rules)
        if rules != RULES[-3]:  # every rule but a min-p alone changes the text
            assert a != t.generate("the ", length=120, seed=seed)


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_a_bias_of_minus_100_removes_a_character_at_any_temperature(backend):
    s = make_sampler(backend=backend)
    plain = s.generate("", length=3000, seed=1, temperature=100.0)
    assert "e" in plain and "a" in plain
    banned = s.generate("", length=3000, seed=1, temperature=100.0, logit_bias={"e": -100, "a": -100})
    assert "e" not in banned and "a" not in banned
    assert "e" in s.generate("", length=3000, seed=1, temperature=100.0, logit_bias={"e": -99})


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_min_p_of_1_is_greedy_at_any_temperature(backend):
    s = make_sampler(backend=backend)
    greedy = s.generate("the ", length=200, temperature=0)
    for temperature in (0.3, 1.0, 5.0):
        assert s.generate("the ", length=200, min_p=1.0, temperature=temperature, seed=9) == greedy


def _chi2_ok(counts: np.ndarray, probs: np.ndarray) -> None:
    """Pearson's chi-square of counts against probs, over cells with enough expectation; the threshold is far
    above the 99.9% quantile, and cells of probability 0 must be empty."""
    n = counts.sum()
    expected = probs * n
    assert counts[probs == 0].sum() == 0
    mask = expected >= 5
    chi2 = float(((counts[mask] - expected[mask]) ** 2 / expected[mask]).sum())
    dof = int(mask.sum()) - 1
    assert chi2 < dof + 6 * math.sqrt(2 * dof), (chi2, dof)


def _counts(s, texts, at=0):
    counts = np.zeros(len(s.vocab))
    for text in texts:
        counts[s.vocab.chars.index(text[at])] += 1
    return counts


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_bias_and_repetition_follow_the_softmax_of_the_changed_logits(backend):
    s = make_sampler(backend=backend)
    x = reference_logits(s, "the h").double().numpy()
    v = s.vocab.chars
    want = x.copy()
    want[v.index("a")] += 2.0
    want[v.index("o")] -= 1.0
    for c in set("he h"):  # the last 4 characters of the prompt
        i = v.index(c)
        want[i] = want[i] / 1.6 if want[i] > 0 else want[i] * 1.6
    rules = dict(logit_bias={"a": 2.0, "o": -1.0}, repetition_penalty=1.6, repeat_last_n=4)
    texts = s.generate("the h", length=1, n=20000, seed=77, temperature=0.9, **rules)
    _chi2_ok(_counts(s, texts), _softmax(want / 0.9))


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_presence_and_frequency_follow_the_softmax_after_the_first_character(backend):
    """The second character, among samples whose first is the likeliest one: its logit lowered once by
    presence and once by frequency (one occurrence so far), the others unchanged; the prompt not counted."""
    s = make_sampler(backend=backend)
    texts = s.generate("th", length=2, n=30000, seed=5, presence_penalty=0.8, frequency_penalty=0.6)
    first = max({t[0] for t in texts}, key=lambda c: sum(t[0] == c for t in texts))
    seconds = [t[1:] for t in texts if t[0] == first]
    x = reference_logits(s, "th" + first).double().numpy()
    x[s.vocab.chars.index(first)] -= 0.8 + 0.6
    _chi2_ok(_counts(s, seconds), _softmax(x))


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_min_p_keeps_the_characters_at_least_p_times_the_likeliest(backend):
    s = make_sampler(backend=backend)
    p = _softmax(reference_logits(s, "th").double().numpy() / 0.4)
    kept = np.where(p >= 0.5 * p.max(), p, 0.0)
    assert 3 <= (kept > 0).sum() < len(p) - 5  # the cut means something here
    texts = s.generate("th", length=1, n=20000, seed=3, temperature=0.4, min_p=0.5)
    _chi2_ok(_counts(s, texts), kept / kept.sum())


@pytest.mark.parametrize(
    "rules,message",
    [
        (dict(logit_bias={"\u20ac": 1.0}), "logit_bias names '\u20ac', which is not in the model's vocabulary"),
        (dict(logit_bias=dict.fromkeys(ALPHABET, -100)), "logit_bias bans every character"),
        (dict(logit_bias={"ab": 1.0}), "logit_bias must have one character per key"),
        (dict(logit_bias={"a": 101}), r"logit_bias must give each character a number in \[-100, 100\], got 101"),
        (dict(logit_bias={"a": float("nan")}), "logit_bias must give 'a' a finite number"),
        (dict(logit_bias=[1, 2]), "logit_bias must be a dict"),
        (dict(min_p=1.5), r"min_p must be in \[0, 1\], got 1.5"),
        (dict(presence_penalty=2.5), r"presence_penalty must be in \[-2, 2\]"),
        (dict(frequency_penalty=-3), r"frequency_penalty must be in \[-2, 2\]"),
        (dict(repetition_penalty=0), r"repetition_penalty must be in \[0.01, 100\], got 0"),
        (dict(repetition_penalty=5e-324), r"repetition_penalty must be in \[0.01, 100\]"),
        (dict(logit_bias={"e": 10**400}), "logit_bias must give 'e' a finite number"),
        (dict(temperature=10**400), "temperature must be a finite number"),
        (dict(logit_bias=[("e", 1.0), ("e", -100.0)]), "logit_bias names 'e' twice"),
        (dict(repeat_last_n=-2), "repeat_last_n must be at least -1, got -2"),
    ],
)
def test_bad_rules_are_one_clear_error(rules, message):
    s = make_sampler(backend="numpy")
    with pytest.raises(ChargenError, match=message):
        s.generate("the", length=5, **rules)


@pytest.mark.parametrize("span", [0, 1, 2, 5, 17, -1])
def test_one_row_on_the_host_keeps_its_window_as_a_batch_computes_it(span):
    """A single NumPy row slides its window by scalars (History.scalars); rows of a batch compute it from
    where each character was last seen. Both, over a long random walk, change the logits alike."""
    rng = np.random.default_rng(span + 2)
    opts = SampleOptions(repetition_penalty=1.9, repeat_last_n=span, presence_penalty=0.3, frequency_penalty=0.2)
    prompt = rng.integers(0, 7, size=9)
    one = History.start(NUMPY_OPS, opts, rng.normal(size=7), prompt, 7, 1)
    two = History.start(NUMPY_OPS, opts, one.a["bias"][0], prompt, 7, 2)
    assert one.scalars and not two.scalars
    for _ in range(300):
        logits = rng.normal(size=(1, 7)).astype(np.float32)
        assert one.adjust(logits).tolist() == two.adjust(np.repeat(logits, 2, axis=0))[:1].tolist()
        i = int(rng.integers(0, 7))
        one.update(np.array([i]))
        two.update(np.array([i, (i + 1) % 7]))
