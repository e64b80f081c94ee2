"""CharRNN: shapes, whole-vs-chunked equality with carried state, config validation; the Elman cell is tanh."""

import pytest
import torch

from chargen import ChargenError
from chargen.model.network import CharRNN, ModelConfig, detach_state


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "mingru", "minlstm"])
@pytest.mark.parametrize("layers", [1, 3])
def test_whole_sequence_equals_chunks_with_carried_state(cell, layers):
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=17, cell=cell, num_layers=layers, hidden_size=24, dropout=0.3)).eval()
    ids = torch.randint(0, 17, (3, 50))
    whole, whole_state = model(ids)
    pieces, state = [], None
    for lo, hi in [(0, 1), (1, 8), (8, 9), (9, 31), (31, 50)]:  # ragged chunks, including single steps
        logits, state = model(ids[:, lo:hi], state)
        pieces.append(logits)
        state = detach_state(state)
    chunked = torch.cat(pieces, dim=1)
    assert chunked.shape == whole.shape == (3, 50, 17)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    for a, b in zip(whole_state if cell == "lstm" else (whole_state,), state if cell == "lstm" else (state,)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "mingru", "minlstm"])
def test_init_state_is_the_zero_state(cell):
    model = CharRNN(ModelConfig(vocab_size=9, cell=cell, num_layers=2, hidden_size=8)).eval()
    ids = torch.randint(0, 9, (4, 6))
    state = model.init_state(4)
    shapes = [s.shape for s in (state if cell == "lstm" else (state,))]
    assert shapes == [(2, 4, 8)] * (2 if cell == "lstm" else 1)
    torch.testing.assert_close(model(ids, state)[0], model(ids)[0])


def test_embedding_defaults_to_hidden_and_tying_shares_the_matrix():
    cfg = ModelConfig(vocab_size=11, hidden_size=16, tie_weights=True)
    assert cfg.embedding_size == 16
    model = CharRNN(cfg)
    assert model.head.weight is model.embedding.weight
    untied = CharRNN(ModelConfig(vocab_size=11, hidden_size=16))
    assert model.num_parameters == untied.num_parameters - 11 * 16


def test_config_round_trips_through_dict():
    cfg = ModelConfig(vocab_size=70, cell="gru", num_layers=3, hidden_size=32, dropout=0.2)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(cell="transformer"), "--cell must be one of lstm, gru, rnn, mingru, minlstm, got 'transformer'"),
        (dict(num_layers=0), "--layers must be at least 1, got 0"),
        (dict(hidden_size=-4), "--hidden must be at least 1, got -4"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
        (dict(dropout=-0.1), r"dropout must be in \[0, 1\)"),
        (dict(num_layers=2.5), "--layers must be a whole number, got 2.5"),
        (dict(tie_weights="yes"), "--tie must be true or false, got 'yes'"),
        (dict(tie_weights=True, embedding_size=8, hidden_size=16), "tied weights need"),
    ],
)
def test_bad_model_configs(kwargs, message):
    with pytest.raises(ChargenError, match=message):
        ModelConfig(vocab_size=10, **kwargs)


def test_locked_dropout_keeps_one_mask_across_time():
    from chargen.model.network import LockedDropout

    drop = LockedDropout(0.4).train()
    torch.manual_seed(0)
    x = torch.ones(64, 30, 20)
    y = drop(x)
    zeros = y == 0
    assert torch.equal(zeros, zeros[:, :1].expand_as(zeros))  # the same units at every step
    assert 0.3 < zeros[:, 0].float().mean() < 0.5  # about p of them
    kept = y[~zeros]
    assert torch.allclose(kept, torch.full_like(kept, 1 / 0.6))  # scaled: the mean is kept
    assert drop.eval()(x) is x and LockedDropout(0.0).train()(x) is x


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "mingru", "minlstm"])
def test_input_and_output_dropout_act_in_training_only(cell):
    torch.manual_seed(0)
    cfg = dict(vocab_size=13, cell=cell, num_layers=2, hidden_size=16)
    plain = CharRNN(ModelConfig(**cfg))
    dropped = CharRNN(ModelConfig(**cfg, input_dropout=0.5, output_dropout=0.5))
    dropped.load_state_dict(plain.state_dict())  # no new parameters
    ids = torch.randint(0, 13, (4, 12))
    torch.testing.assert_close(dropped.eval()(ids)[0], plain.eval()(ids)[0], rtol=0, atol=0)
    dropped.train()
    h, _ = dropped.features(ids)
    assert torch.equal(h == 0, (h == 0)[:, :1].expand_as(h))  # the output mask is locked too
    assert (h == 0).any()
    assert ModelConfig.from_dict(ModelConfig(**cfg, input_dropout=0.1).to_dict()).input_dropout == 0.1


def test_the_rnn_cell_is_elmans_tanh_and_its_parameters_are_counted():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=11, cell="rnn", num_layers=2, hidden_size=8, embedding_size=5)
    model = CharRNN(config).eval()
    assert model.num_parameters == config.num_parameters
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == config.parameter_shapes()
    ids = torch.randint(0, 11, (2, 7))
    x, h = model.embedding(ids), [torch.zeros(2, 8), torch.zeros(2, 8)]
    outs = []
    for t in range(7):  # by hand: h = tanh(W_ih x + b_ih + W_hh h + b_hh), layer by layer
        inp = x[:, t]
        for k in range(2):
            w_ih, w_hh = getattr(model.rnn, f"weight_ih_l{k}"), getattr(model.rnn, f"weight_hh_l{k}")
            b = getattr(model.rnn, f"bias_ih_l{k}") + getattr(model.rnn, f"bias_hh_l{k}")
            h[k] = torch.tanh(inp @ w_ih.T + h[k] @ w_hh.T + b)
            inp = h[k]
        outs.append(inp)
    features, state = model.features(ids)
    torch.testing.assert_close(features, torch.stack(outs, 1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state, torch.stack(h), rtol=1e-5, atol=1e-6)
