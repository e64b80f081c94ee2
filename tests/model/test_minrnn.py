"""minGRU and minLSTM (issue 36): the log-space scan and the looped recurrence (with its written-out backward)
equal the step-by-step recurrence at every position, and each other in values and gradients; a window read
whole equals it read in chunks with the state carried; g and the scan by hand; gradients finite."""

import math

import numpy as np
import pytest
import torch

from chargen.model.minrnn import MinRNN, coefficients, g, log_g, recurrence, scan


def test_g_and_log_g():
    x = torch.tensor([-30.0, -2.0, -1e-3, 0.0, 1e-3, 2.0, 50.0], dtype=torch.float64)
    want = [1 / (1 + math.exp(30)), 1 / (1 + math.exp(2)), 1 / (1 + math.exp(1e-3)), 0.5, 0.501, 2.5, 50.5]
    torch.testing.assert_close(g(x), torch.tensor(want, dtype=torch.float64))
    torch.testing.assert_close(log_g(x), torch.log(torch.tensor(want, dtype=torch.float64)))
    assert torch.isfinite(log_g(torch.tensor([-200.0]))).all()  # no log of an underflowed sigmoid


def test_the_scan_is_the_recurrence_at_every_position():
    torch.manual_seed(0)
    a = torch.rand(3, 50, 4, dtype=torch.float64) * 0.98 + 0.01
    b = torch.rand(3, 50, 4, dtype=torch.float64)
    h0 = torch.rand(3, 1, 4, dtype=torch.float64)
    h, want = h0[:, 0], []
    for t in range(50):  # h_t = a_t h_{t-1} + b_t, one step at a time
        h = a[:, t] * h + b[:, t]
        want.append(h)
    got = torch.exp(scan(a.log(), b.log(), h0.log()))
    torch.testing.assert_close(got, torch.stack(want, 1), rtol=1e-12, atol=0)
    torch.testing.assert_close(recurrence(a, b, h0[:, 0]), torch.stack(want, 1), rtol=1e-12, atol=0)
    zero = torch.exp(scan(a.log(), b.log(), torch.full_like(h0, -math.inf)))  # from the zero state
    torch.testing.assert_close(zero[:, 0], b[:, 0])


def test_the_recurrences_backward_is_autograds():
    torch.manual_seed(5)
    a = (torch.rand(2, 30, 3, dtype=torch.float64) * 0.98 + 0.01).requires_grad_()
    b = torch.rand(2, 30, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.rand(2, 3, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(recurrence, (a, b, h0))


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_scan_and_recurrence_give_the_same_states_and_gradients(cell):
    torch.manual_seed(6)
    ways = {m: MinRNN(cell, 8, 8, num_layers=2, method=m).double() for m in ("scan", "recurrence")}
    ways["recurrence"].load_state_dict(ways["scan"].state_dict())
    x = torch.randn(3, 70, 8, dtype=torch.float64)
    h0 = torch.rand(2, 3, 8, dtype=torch.float64) + 0.1
    got = {}
    for m, rnn in ways.items():
        xs, hs = x.clone().requires_grad_(), h0.clone().requires_grad_()
        out, h_n = rnn(xs, hs)
        loss = (out * torch.linspace(-1, 1, 70, dtype=torch.float64)[:, None]).sum() + h_n.square().sum()
        got[m] = (out, h_n, *torch.autograd.grad(loss, [xs, hs, *rnn.parameters()]))
    for one, other in zip(got["scan"], got["recurrence"]):
        torch.testing.assert_close(one, other, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["scan", "recurrence"])
@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
@pytest.mark.parametrize("sizes", [(16, 16), (8, 16)])  # with the first layer's residual, and without
def test_forward_is_the_step_recurrence_at_every_position(cell, sizes, method):
    torch.manual_seed(1)
    E, H = sizes
    rnn = MinRNN(cell, E, H, num_layers=3, method=method).eval()
    x = torch.randn(2, 40, E)
    h0 = torch.rand(3, 2, H) + 0.1  # a carried state: positive, as the cells keep it
    with torch.no_grad():
        out, h_n = rnn(x, h0)
        h, steps = h0, []
        for t in range(40):
            y, h = rnn.step(x[:, t], h)
            steps.append(y)
    torch.testing.assert_close(out, torch.stack(steps, 1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(h_n, h, rtol=1e-4, atol=1e-5)
    assert (h_n > 0).all()


@pytest.mark.parametrize("method", ["scan", "recurrence"])
@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_whole_equals_chunks_with_the_state_carried(cell, method):
    torch.manual_seed(2)
    rnn = MinRNN(cell, 12, 12, num_layers=2, method=method).eval()
    x = torch.randn(3, 64, 12)
    with torch.no_grad():
        whole, whole_h = rnn(x)
        pieces, h = [], None
        for lo, hi in [(0, 1), (1, 9), (9, 10), (10, 37), (37, 64)]:
            y, h = rnn(x[:, lo:hi], h)
            pieces.append(y)
    torch.testing.assert_close(torch.cat(pieces, 1), whole, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(h, whole_h, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["scan", "recurrence"])
@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_gradients_are_finite_over_a_long_window_and_reach_every_parameter(cell, method):
    torch.manual_seed(3)
    rnn = MinRNN(cell, 16, 16, num_layers=2, dropout=0.1, method=method).train()
    x = torch.randn(2, 1024, 16) * 5  # saturating inputs, a long window
    out, h = rnn(x)
    (out.square().mean() + h.mean()).backward()
    for name, p in rnn.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert torch.isfinite(out).all()


def test_parameters_are_named_as_nn_grus_and_counted():
    rnn = MinRNN("minlstm", 8, 16, num_layers=2)
    shapes = {k: tuple(v.shape) for k, v in rnn.state_dict().items()}
    assert shapes == {
        "norm_weight_l0": (8,),
        "norm_bias_l0": (8,),
        "weight_ih_l0": (48, 8),
        "bias_ih_l0": (48,),
        "norm_weight_l1": (16,),
        "norm_bias_l1": (16,),
        "weight_ih_l1": (48, 16),
        "bias_ih_l1": (48,),
    }
    with pytest.raises(ValueError, match="cell must be one of mingru, minlstm"):
        MinRNN("lstm", 8, 16, 1)
    with pytest.raises(ValueError, match="method must be one of auto, scan, recurrence"):
        MinRNN("mingru", 8, 16, 1, method="parallel")


def test_a_minlstm_with_both_gates_shut_stays_finite_on_every_path():
    """f / (f + i) where both sigmoids underflow to 0 (pre-activations below about -104) is 1/2 each, not
    0 / 0: in torch's coefficients, the loop, the scan, and NumPy's (which the browser and ONNX follow)."""
    from chargen.generate.numpy_cells import min_coefficients

    pre = torch.tensor([[-120.0, -120.0, 1.0], [-200.0, 50.0, -3.0], [30.0, -40.0, 2.0], [0.3, -0.2, 0.1]])
    a, b = coefficients("minlstm", pre)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    torch.testing.assert_close(a[:, 0], torch.tensor([0.5, 0.0, 1.0, 0.5606458]), rtol=1e-6, atol=1e-30)
    torch.testing.assert_close(a + b / g(pre[:, 2:]), torch.ones(4, 1))  # f' + i' = 1
    na, nb = min_coefficients("minlstm", pre.numpy())
    np.testing.assert_allclose(na, a.numpy(), rtol=1e-6)
    np.testing.assert_allclose(nb, b.numpy(), rtol=1e-6)
    rnn = MinRNN("minlstm", 4, 4, num_layers=2)
    with torch.no_grad():
        rnn.weight_ih_l0[:8] = 0.0  # f and i of layer 0 read nothing: their biases alone, far below -104
        rnn.bias_ih_l0[:8] = -150.0
    x = torch.randn(2, 30, 4)
    for method in ("scan", "recurrence"):
        rnn.method = method
        out, h = rnn(x, torch.rand(2, 2, 4) + 0.1)
        assert torch.isfinite(out).all() and torch.isfinite(h).all(), method


def test_bad_shapes_are_one_clear_error():
    with pytest.raises(ValueError, match="at least 1, got 4, 0, 2"):
        MinRNN("mingru", 4, 0, 2)
    rnn = MinRNN("mingru", 4, 4, 2)
    with pytest.raises(ValueError, match=r"h0 must be \(layers, batch, hidden\) = \(2, 3, 4\), got \(1, 3, 4\)"):
        rnn(torch.randn(3, 5, 4), torch.rand(1, 3, 4))
    with pytest.raises(ValueError, match="time at least 1"):
        rnn(torch.randn(3, 0, 4))
