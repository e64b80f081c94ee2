"""The sampler: determinism, greedy, distributions, top-k/top-p, stops, streaming, batching, threads."""

import math
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from chargen import ChargenError, Sampler
from chargen.data.vocab import CharVocab
from chargen.generate.numpy_step import NumpyRuntime, NumpyStep
from chargen.generate.torch_step import FastStep, pick, uniforms
from chargen.model.network import CharRNN, ModelConfig
from conftest import REPO

ALPHABET = "\n abcdefghijklmnopqrstuvwxyz.,!?'ABCDEFGHIJ"


def make_sampler(cell="lstm", layers=2, hidden=24, seed=0, with_unk=False, backend="torch") -> Sampler:
    torch.manual_seed(seed)
    vocab = CharVocab.build(ALPHABET, with_unk=with_unk)
    model = CharRNN(ModelConfig(vocab_size=len(vocab), cell=cell, num_layers=layers, hidden_size=hidden))
    with torch.no_grad():  # sharper distributions than the default init, so tests see structure
        # (an Elman RNN's tanh of such weights is chaotic: float32 noise grows; a min cell's unbounded states
        # make them near one-hot, where no rule changes the text)
        for p in model.parameters():
            p.mul_(1.0 if cell in ("rnn", "mingru", "minlstm") else 3.0)
    if backend == "torch":
        s = Sampler(model, vocab)
    else:
        weights = {k: v.numpy() for k, v in model.state_dict().items()}
        s = Sampler._with(NumpyRuntime(NumpyStep(weights, model.config)), vocab)
    s.reference = model.eval()  # the nn.LSTM/nn.GRU model, for reference values
    return s


# Every behaviour of the sampler, on both backends.
@pytest.fixture(scope="module", params=["lstm-torch", "gru-torch", "lstm-numpy", "gru-numpy"])
def sampler(request):
    cell, backend = request.param.split("-")
    return make_sampler(cell, backend=backend)


def reference_logits(s: Sampler, text: str) -> torch.Tensor:
    """Next-character logits after the start character and ``text``, with nn.LSTM/nn.GRU whole."""
    ids = [s.vocab.start_id] + s.vocab.encode(text)
    with torch.no_grad():
        return s.reference(torch.tensor([ids]))[0][0, -1]


def test_same_seed_same_text_and_different_seeds_differ(sampler):
    a = sampler.generate("the ", length=80, seed=5)
    assert a == sampler.generate("the ", length=80, seed=5)
    assert len(a) == 80 and set(a) <= set(ALPHABET)
    assert a != sampler.generate("the ", length=80, seed=6)


def test_temperature_zero_is_greedy_and_equals_top_k_1(sampler):
    greedy = sampler.generate("ab", length=40, temperature=0)
    assert greedy == sampler.generate("ab", length=40, top_k=1, seed=3)
    assert greedy == sampler.generate("ab", length=40, temperature=0, seed=99)  # seed is irrelevant
    # the argmax chain, computed with the whole-sequence model at every step
    text = ""
    for _ in range(40):
        text += sampler.vocab.chars[int(reference_logits(sampler, "ab" + text).argmax())]
    assert greedy == text


def test_fast_step_equals_nn_rnn_for_every_step():
    for cell in ("lstm", "gru", "rnn", "mingru", "minlstm"):
        s = make_sampler(cell, layers=3, hidden=20)
        fs = FastStep(s.model)
        ids = torch.randint(0, len(s.vocab), (5, 60), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            whole, _ = s.model(ids)  # (5, 60, V)
        state = fs.to_fast(s.model.init_state(5))
        for t in range(60):
            logits, state = fs(ids[:, t], state)
            torch.testing.assert_close(logits, whole[:, t], rtol=1e-5, atol=1e-5)
        # and the state after the last step is the nn.LSTM/nn.GRU state
        _, nn_state = s.model(ids)
        for a, b in zip(
            nn_state if cell == "lstm" else (nn_state,),
            fs.from_fast(state) if cell == "lstm" else (fs.from_fast(state),),
        ):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _first_char_counts(s, n, **kw):
    firsts = s.generate("th", length=1, n=n, seed=1234, **kw)
    counts = np.zeros(len(s.vocab))
    for c in firsts:
        counts[s.vocab.chars.index(c)] += 1
    return counts


@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
def test_first_character_follows_the_tempered_softmax(sampler, temperature):
    n = 20000
    counts = _first_char_counts(sampler, n, temperature=temperature)
    expected = torch.softmax(reference_logits(sampler, "th").double() / temperature, -1).numpy() * n
    # Pearson chi-square over cells with enough expectation; threshold far above the 99.9% quantile
    mask = expected >= 5
    chi2 = float(((counts[mask] - expected[mask]) ** 2 / expected[mask]).sum())
    dof = int(mask.sum()) - 1
    assert chi2 < dof + 6 * math.sqrt(2 * dof), (chi2, dof)
    assert counts[~mask].sum() <= expected[~mask].sum() + 6 * math.sqrt(expected[~mask].sum() + 1)


@pytest.mark.parametrize("top_k,top_p", [(3, None), (None, 0.5), (None, 0.9), (5, 0.7)])
def test_top_k_and_top_p_stay_inside_the_allowed_set(sampler, top_k, top_p):
    probs = torch.softmax(reference_logits(sampler, "th").double(), -1)
    order = torch.argsort(probs, descending=True).tolist()
    allowed = set(order[:top_k] if top_k else order)
    if top_p is not None:
        kept, mass = [], 0.0
        ranked = [i for i in order if i in allowed]
        for i in ranked:
            kept.append(i)
            mass += float(probs[i]) / float(sum(probs[j] for j in ranked))
            if mass >= top_p:
                break
        allowed = set(kept)
    counts = _first_char_counts(sampler, 3000, top_k=top_k, top_p=top_p)
    used = set(np.flatnonzero(counts).tolist())
    assert used <= allowed
    assert len(used) >= min(2, len(allowed))  # and it does sample among them


def test_stop_strings_cut_the_text(sampler):
    full = sampler.generate("", length=400, seed=11)
    stop = full[30:32]  # a two-character string known to appear
    cut = sampler.generate("", length=400, seed=11, stop=stop)
    assert cut == full[: full.index(stop)]
    assert stop not in cut
    several = sampler.generate("", length=400, seed=11, stop=["zzzz-never", stop])
    assert several == cut


@pytest.mark.parametrize("stop", [None, "e ", ["\n", "th"], "never-appears"])
def test_stream_joins_to_generate(sampler, stop):
    kw = dict(length=300, temperature=0.9, top_p=0.95, seed=21, stop=stop)
    pieces = list(sampler.stream("a", **kw))
    assert "".join(pieces) == sampler.generate("a", **kw)
    assert all(pieces)


def test_batched_samples_follow_the_seeding_rule(sampler):
    batch = sampler.generate("the", length=50, n=4, seed=100, temperature=0.9, top_k=10)
    assert isinstance(batch, list) and len(batch) == 4
    for i, text in enumerate(batch):
        assert text == sampler.generate("the", length=50, seed=100 + i, temperature=0.9, top_k=10)
    assert len(set(batch)) > 1


def test_batched_stops_are_per_sample(sampler):
    batch = sampler.generate("", length=200, n=6, seed=7, stop="e")
    for i, text in enumerate(batch):
        assert text == sampler.generate("", length=200, seed=7 + i, stop="e") and "e" not in text


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_thread_safety_same_seed_same_text(backend):
    s = make_sampler("lstm", backend=backend)
    expected = {seed: s.generate("a", length=150, seed=seed) for seed in range(8)}
    results = {}

    def work(seed):
        for _ in range(3):
            results.setdefault(seed, []).append(s.generate("a", length=150, seed=seed))

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for seed, texts in results.items():
        assert texts == [expected[seed]] * 3


def test_empty_prompt_and_zero_length(sampler):
    assert sampler.generate("", length=0, seed=1) == ""
    assert len(sampler.generate(length=10, seed=1)) == 10
    assert sampler.generate(length=3, n=2, seed=1, temperature=0) == [sampler.generate(length=3, temperature=0)] * 2


def test_score_matches_the_model(sampler):
    text = "the cat sat."
    score = sampler.score(text)
    assert score.count == len(text) and score.logprobs.shape == (len(text),)
    for i in range(len(text)):
        logits = reference_logits(sampler, text[:i])
        expected = float(torch.log_softmax(logits.double(), -1)[sampler.vocab.chars.index(text[i])])
        assert score.logprobs[i] == pytest.approx(expected, abs=1e-4)
    assert score.nats == pytest.approx(-score.logprobs.mean())
    assert score.bpc == pytest.approx(score.nats / math.log(2))


def test_score_file_streams_with_carried_state(sampler, tmp_path):
    text = "the quick brown fox.\n" * 40
    p = tmp_path / "t.txt"
    p.write_text(text)
    whole = sampler.score(text)
    streamed = sampler.score_file(p, chunk_chars=37)
    assert streamed.count == len(text)
    assert streamed.nats == pytest.approx(whole.nats, rel=1e-5)


def test_uniforms_are_counter_based():
    a = uniforms(np.array([5, 6], dtype=np.uint64), 0, 10)
    b = uniforms(np.array([6], dtype=np.uint64), 3, 7)
    assert a.shape == (2, 10) and np.array_equal(a[1, 3:], b[0])
    big = uniforms(np.arange(1000, dtype=np.uint64), 0, 100).ravel()
    assert big.min() >= 0 and big.max() < 1 and abs(big.mean() - 0.5) < 0.01


def test_pick_never_returns_zero_probability_ids():
    logits = torch.tensor([[0.0, float("-inf"), 2.0, float("-inf")]] * 4)
    u = torch.tensor([0.0, 0.5, 0.999999999, 1 - 1e-16], dtype=torch.float64)
    ids = pick(logits, u, 1.0, None, None, None)
    assert set(ids.tolist()) <= {0, 2}


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(temperature=-0.1), "temperature must be at least 0, got -0.1"),
        (dict(temperature=float("nan")), "temperature must be a finite number"),
        (dict(temperature=float("inf")), "temperature must be a finite number"),
        (dict(top_k=0), "top_k must be at least 1, got 0"),
        (dict(top_k=2.5), "top_k must be a whole number, got 2.5"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(length=-1), "length must be at least 0, got -1"),
        (dict(n=0), r"n must be in \[1, 65536\], got 0"),
        (dict(n=2**20), r"n must be in \[1, 65536\]"),
        (dict(temperature=1e-320, top_p=2.0), "top_p must be in"),
        (dict(seed=-3), r"seed must be in \[0, 2\*\*63 - 1\], got -3"),
        (dict(seed=2**64), r"seed must be in \[0, 2\*\*63 - 1\]"),
        (dict(unknown="drop"), "unknown must be one of error, unk"),
        (dict(stop=""), "stop strings must be non-empty"),
    ],
)
def test_bad_arguments_are_value_errors(sampler, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sampler.generate("a", **kwargs)


@pytest.mark.parametrize("kwargs", [dict(temperature=-1), dict(top_p=2.0), dict(seed=-1), dict(stop=[""])])
def test_stream_checks_its_arguments_before_the_first_piece(sampler, kwargs):
    with pytest.raises(ValueError):
        sampler.stream("a", **kwargs)  # not iterated: the error comes from the call itself
    with pytest.raises(ChargenError, match="not in the vocabulary"):
        sampler.stream("a\u20ac")


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_unknown_prompt_characters(backend):
    s = make_sampler("lstm", backend=backend)
    with pytest.raises(ChargenError, match=r"not in the vocabulary: 'Z' '€'; remove them"):
        s.generate("aZ€", length=5)
    with_unk = make_sampler("lstm", with_unk=True, backend=backend)
    with pytest.raises(ChargenError, match="pass unknown='unk'"):
        with_unk.generate("aZ", length=5)
    text = with_unk.generate("aZ", length=20, unknown="unk", seed=1)
    assert len(text) == 20 and "<unk>" not in text  # the unknown token is never generated


def test_sampler_import_does_not_pull_datasets(tmp_path):
    code = "import sys; from chargen import Sampler; print('datasets' in sys.modules)"
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO))
    )
    assert r.stdout.strip() == "False", r.stderr


def test_an_options_object_equals_the_same_keywords(sampler):
    from chargen import SampleOptions

    opts = SampleOptions(length=40, seed=4, top_k=5, temperature=1.1)
    assert sampler.generate("the", opts) == sampler.generate("the", length=40, seed=4, top_k=5, temperature=1.1)
    assert sampler.generate("the", opts, n=2) == sampler.generate(
        "the", length=40, seed=4, top_k=5, temperature=1.1, n=2
    )
    assert "".join(sampler.stream("the", opts, stop="e")) == sampler.generate("the", opts, stop="e")
    with pytest.raises(ValueError, match="stream produces one sample"):
        sampler.stream("the", opts, n=2)


def test_the_default_temperature_is_the_clis(sampler):
    from chargen.config import DEFAULT_TEMPERATURE

    assert sampler.generate("a", length=60, seed=9) == sampler.generate(
        "a", length=60, seed=9, temperature=DEFAULT_TEMPERATURE
    )


def test_top_p_keeps_the_lower_ids_among_ties():
    logits = torch.zeros(3, 6, dtype=torch.float64)  # six tied characters
    u = torch.tensor([0.0, 0.5, 0.999], dtype=torch.float64)
    for _ in range(5):
        ids = pick(logits, u, 1.0, None, 0.5, None)  # half the mass: exactly ids 0, 1, 2
        assert set(ids.tolist()) <= {0, 1, 2} and ids.tolist() == [0, 1, 2]
    banned = torch.tensor([1])
    assert pick(logits, u, 1.0, None, 0.5, banned).tolist() == pick(logits, u, 1.0, None, 0.5, 1).tolist()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "mingru", "minlstm"])
def test_a_pickled_torch_sampler_holds_cpu_weights_and_decodes_the_same(cell):
    """The server's decoding process is sent the sampler by pickle: it must carry plain CPU tensors (CUDA
    ones would travel as IPC handles into the server's memory) and rebuild to the same text."""
    import pickle

    s = make_sampler(cell)
    state = s.runtime.__getstate__()
    assert state["device"] == "cpu" and state["config"] == s.model.config and state["step"] is None
    assert all(type(t) is torch.Tensor and t.device.type == "cpu" for t in state["weights"].values())
    assert set(state["weights"]) == set(s.model.state_dict())
    copy = pickle.loads(pickle.dumps(s))
    assert copy.model is not s.model and copy.device == s.device
    assert copy.generate("ab", length=60, n=3, seed=4, stop=["x"]) == s.generate(
        "ab", length=60, n=3, seed=4, stop=["x"]
    )


@pytest.mark.parametrize("every", [2, 7, 32])
def test_reading_ids_in_blocks_gives_the_same_text(every):
    """On CUDA the ids are read 32 steps at a time (one copy, not one wait per character): stop strings,
    batches and streams come out as when each step is read."""
    s = make_sampler("lstm")
    opts = dict(length=150, seed=11, stop=["e ", "xyz"])
    want = s.generate("ab", n=5, **opts), list(s.stream("ab", **opts)), s.generate("ab", length=50, seed=2)
    s.runtime.read_every = every
    got = s.generate("ab", n=5, **opts), list(s.stream("ab", **opts)), s.generate("ab", length=50, seed=2)
    assert got[0] == want[0] and "".join(got[1]) == "".join(want[1]) and got[2] == want[2]
    assert any(len(t) < 150 for t in got[0])  # some rows did stop


def test_host_copies_on_the_cpu_are_the_tensors_themselves():
    from chargen.generate.torch_step import HostCopy

    host = HostCopy(torch.device("cpu"))
    t = torch.arange(6).reshape(2, 3)
    assert host.read(t).tolist() == [[0, 1, 2], [3, 4, 5]] and not host.pinned
    u = np.linspace(0, 1, 5)
    assert torch.equal(host.write(u), torch.from_numpy(u))


def test_a_pickle_for_a_device_that_is_not_here_is_one_error(monkeypatch):
    import pickle

    s = make_sampler("gru")
    s.encode("ab")  # the vocabulary's 4 MB lookup table is made here, and not pickled
    data = pickle.dumps(s)
    assert len(data) < 200_000
    moved = data.replace(b"\x8c\x03cpu", b"\x8c\x04cuda")  # the same sampler, as if saved on a GPU machine
    with pytest.raises(ChargenError, match="--device cuda asked for, but this machine has no CUDA device"):
        pickle.loads(moved)


@pytest.mark.parametrize("backend", ["torch", "numpy"])
@pytest.mark.parametrize("cell", ["lstm", "minlstm"])
def test_a_model_whose_scores_are_not_numbers_is_one_clear_error(cell, backend):
    s = make_sampler(cell)
    with torch.no_grad():
        s.model.head.bias[3] = float("nan")
    if backend == "numpy":
        weights = {k: v.numpy() for k, v in s.model.state_dict().items()}
        s = Sampler._with(NumpyRuntime(NumpyStep(weights, s.model.config)), s.vocab)
    for call in (lambda: s.generate("the ", length=20, seed=1), lambda: "".join(s.stream("", length=5, seed=1))):
        with pytest.raises(ChargenError, match=r"^this model's scores after the prompt are not numbers \(NaN or"):
            call()
