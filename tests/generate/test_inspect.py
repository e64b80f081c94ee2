"""The inspector (issue 34): surprise, guesses, units over a text, the units that track features, gates."""

import tracemalloc

import numpy as np
import pytest
import torch
from test_sampler import ALPHABET, make_sampler

from chargen import ChargenError, Sampler
from chargen.data.vocab import CharVocab
from chargen.generate import inspect as inspector
from chargen.generate.inspect import FEATURES, features_of
from chargen.generate.numpy_step import NumpyRuntime, NumpyStep
from chargen.model.network import CharRNN, ModelConfig

TEXT = "the king said, all is well.\nAnd the BIG one? she said HI! 'CHE'\n" * 3


@pytest.fixture(
    scope="module",
    params=[
        f"{cell}-{backend}" for backend in ("torch", "numpy") for cell in ("lstm", "gru", "rnn", "mingru", "minlstm")
    ],
)
def sampler(request):
    cell, backend = request.param.split("-")
    return make_sampler(cell, backend=backend)


def test_logprobs_are_exactly_the_scores(sampler):
    got = sampler.inspect(TEXT)
    assert got.chars == list(TEXT)
    assert np.array_equal(got.logprobs, sampler.score(TEXT).logprobs)
    long = TEXT * 14  # 2,730 characters: three of the scorer's chunks, read in the same pass as the units
    want = sampler.score(long).logprobs
    assert np.array_equal(sampler.inspect(long, units=[]).logprobs, want)
    assert np.array_equal(inspector.inspect(sampler, long, units=[], chunk=500).logprobs, want)


def test_units_are_the_models_own_states(sampler):
    """The top layer's h at every position is what the model computes reading the text whole (nn.LSTM or
    nn.GRU for the reference; a min cell's states, before its residual path adds the layer's input, from its
    steps), and the last position's state is the state after the text."""
    got = sampler.inspect(TEXT)
    ids = [sampler.vocab.start_id] + sampler.vocab.encode(TEXT)
    rnn, x = sampler.reference.rnn, sampler.reference.embedding(torch.tensor([ids]))
    with torch.no_grad():
        out, state = rnn(x)
        if sampler.reference.config.cell in ("mingru", "minlstm"):
            h, tops = torch.zeros_like(state), []
            for t in range(len(ids)):
                _, h = rnn.step(x[:, t], h)
                tops.append(h[-1])
            out = torch.stack(tops, 1)
    top = f"layer {sampler.reference.config.num_layers - 1}"
    np.testing.assert_allclose(got.units[top]["h"], out[0, 1:].numpy(), atol=1e-4)
    if sampler.reference.config.cell == "lstm":
        np.testing.assert_allclose(got.units[top]["c"][-1], state[1][-1, 0].numpy(), atol=1e-4)
        np.testing.assert_allclose(got.units["layer 0"]["h"][-1], state[0][0, 0].numpy(), atol=1e-4)
    else:
        np.testing.assert_allclose(got.units["layer 0"]["h"][-1], state[0, 0].numpy(), atol=1e-4)


def test_read_whole_or_in_chunks_the_units_are_the_same(sampler):
    whole, chunked = inspector.inspect(sampler, TEXT), inspector.inspect(sampler, TEXT, chunk=7)
    for layer, kinds in whole.units.items():
        for kind, a in kinds.items():
            np.testing.assert_allclose(a, chunked.units[layer][kind], atol=1e-6)
    assert [[c for c, _ in row] for row in whole.top] == [[c for c, _ in row] for row in chunked.top]
    assert whole.correlations.keys() == chunked.correlations.keys()


def test_the_top_guesses_are_the_likeliest_in_order(sampler):
    got = sampler.inspect(TEXT, top=5)
    ids = np.concatenate([[sampler.vocab.start_id], sampler.encode(TEXT)])
    step = inspector._step_of(sampler)
    h, _ = step.features(ids[None, :-1])
    probs = np.exp(step.log_probs(h[0]))
    assert len(got.top) == len(TEXT)
    for t, row in enumerate(got.top):
        ps = [p for _, p in row]
        assert len(row) == 5 and ps == sorted(ps, reverse=True) and sum(ps) <= 1 + 1e-6
        want = np.sort(probs[t])[::-1][:5]
        np.testing.assert_allclose(ps, want, rtol=1e-5)
        assert all(probs[t][sampler.vocab.chars.index(c)] == pytest.approx(p, rel=1e-5) for c, p in row)


def test_features_of_a_text():
    f = features_of('a"b(c)"\nD')
    assert f["inside quotes"].tolist() == [0, 1, 1, 1, 1, 1, 1, 0, 0]
    assert f["bracket depth"].tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 0]
    assert f["position in line"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 0]
    assert f["after a newline"].tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 1]
    assert f["upper case"].tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert list(f) == list(FEATURES)


def planted() -> Sampler:
    """A hand-built 1-layer LSTM whose unit 0 holds whether the character just read is upper case: its
    forget gate shut, its input and output gates open, its candidate +1 for upper case and -1 otherwise."""
    torch.manual_seed(3)
    vocab = CharVocab.build(ALPHABET, with_unk=False)
    H = 8
    model = CharRNN(ModelConfig(vocab_size=len(vocab), cell="lstm", num_layers=1, hidden_size=H, embedding_size=2))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.1)
        emb = model.embedding.weight
        emb[:, 0] = torch.tensor([1.0 if c.isupper() else -1.0 for c in vocab.chars])
        emb[:, 1] = 1.0
        w, b = model.rnn.weight_ih_l0, model.rnn.bias_ih_l0
        w[:, :] *= 0.0
        model.rnn.weight_hh_l0[:, :] *= 0.0
        i, f, g, o = 0, H, 2 * H, 3 * H  # the gate rows of unit 0
        b[i], b[f], b[o] = 8.0, -8.0, 8.0
        w[g, 0] = 8.0  # candidate: +1 upper, -1 otherwise
        model.head.bias.copy_(torch.randn(len(vocab)) * 2)  # some characters likelier: surprise varies
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    return Sampler._with(NumpyRuntime(NumpyStep(weights, model.config)), vocab)


def test_a_planted_unit_is_found_with_its_feature_and_its_gates_saturate():
    got = planted().inspect(TEXT, best=3)
    first = got.correlations["upper case"][0]
    assert first["layer"] == 0 and first["unit"] == 0 and first["r"] > 0.99
    gates = got.gates["layer 0"]
    assert gates["forget"]["left"][0] == 1.0 and gates["input"]["right"][0] == 1.0
    assert gates["output"]["right"][0] == 1.0 and set(gates) == {"input", "forget", "output"}
    for name in gates:
        for left, right in zip(gates[name]["left"], gates[name]["right"]):
            assert min(left, right) >= 0 and left + right <= 1


@pytest.mark.parametrize("cell,names", [("mingru", {"update"}), ("minlstm", {"forget", "input"})])
def test_a_min_cells_gates_are_its_sigmoids_counted_at_every_position(cell, names):
    s = make_sampler(cell, layers=2, hidden=6, backend="numpy")
    got = s.inspect(TEXT)
    ids = np.concatenate([[s.vocab.start_id], s.encode(TEXT)])
    record: list = []
    s.runtime.step.features(ids[None, :], None, record)
    for k, layer in enumerate(record):
        pre = layer["pre"][0, 1:].astype(np.float64)  # the states after each character of the text
        assert set(got.gates[f"layer {k}"]) == names
        for g, name in enumerate(inspector.GATE_NAMES[cell]):
            if name in names:
                sig = 1 / (1 + np.exp(-pre[:, g * 6 : (g + 1) * 6]))
                assert got.gates[f"layer {k}"][name]["left"] == np.round((sig < 0.1).mean(0), 4).tolist()
                assert got.gates[f"layer {k}"][name]["right"] == np.round((sig > 0.9).mean(0), 4).tolist()


def test_kept_layers_and_units_and_the_cap(sampler, monkeypatch):
    some = sampler.inspect(TEXT, layers=[1], units=[0, 5])
    whole = sampler.inspect(TEXT)
    assert list(some.units) == ["layer 1"] and some.unit_ids == [0, 5]
    np.testing.assert_array_equal(some.units["layer 1"]["h"], whole.units["layer 1"]["h"][:, [0, 5]])
    assert some.correlations == whole.correlations  # the statistics cover every unit whatever is kept
    assert sampler.inspect(TEXT, units=[]).units == {}  # none kept: no layer listed
    monkeypatch.setattr(inspector, "MAX_KEPT", 100)
    with pytest.raises(ChargenError, match="choose fewer layers or units"):
        sampler.inspect(TEXT)


@pytest.mark.parametrize(
    "text,options,message",
    [
        ("", {}, "there is no text to inspect"),
        ("the \u20ac", {}, "not in the vocabulary"),
        ("the", {"layers": [2]}, "layers must be between 0 and 1"),
        ("the", {"units": [24]}, "units must be between 0 and 23"),
    ],
)
def test_bad_inspections_are_one_clear_error(sampler, text, options, message):
    with pytest.raises(ChargenError, match=message):
        sampler.inspect(text, **options)


def test_memory_stays_flat_in_the_texts_length_when_no_unit_is_kept():
    s = make_sampler(backend="numpy", layers=1, hidden=16)

    def peak(n: int) -> int:
        text = (TEXT * (n // len(TEXT) + 1))[:n]
        tracemalloc.start()
        s.inspect(text, units=[], top=1)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = peak(4_000), peak(32_000)
    assert large < 1.6 * small + (1 << 20), (small, large)


def test_units_in_json_are_rounded_decimals_not_float32_noise(sampler):
    row = sampler.inspect(TEXT, units=[0, 1]).to_json()["units"]["layer 0"]["h"][3]
    assert all(len(repr(x).split(".")[-1]) <= 5 for x in row), row
