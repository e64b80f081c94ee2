"""The step guard's on-device path (what CUDA runs), shown on the CPU: skipped steps change nothing, the
counts are read once per log line, and a diverging run stops at the next check."""

import json

import pytest
import torch
from safetensors.torch import load_file

import chargen.training.guard as guard
import chargen.training.optimizer as optimizer
from chargen import ChargenError
from chargen.model.network import CharRNN
from chargen.runs.checkpoint import ResumeState
from chargen.training.guard import StepGuard
from chargen.training.trainer import Trainer, train
from conftest import TINY


@pytest.fixture
def on_device(monkeypatch):
    """The CPU treated as CUDA is: fused AdamW, the guard's decisions kept on the device."""
    both = frozenset({"cpu", "cuda"})
    monkeypatch.setattr(guard, "DEFERRED_ON", both)
    monkeypatch.setattr(optimizer, "DEFERRED_ON", both)


def nan_losses(monkeypatch, bad) -> None:
    """Training forwards (the n-th, counted from 1) return a NaN loss where ``bad(n)``."""
    calls = {"n": 0}
    original = CharRNN.forward

    def flaky(self, ids, state=None, targets=None):
        out, state = original(self, ids, state, targets)
        if self.training:
            calls["n"] += 1
            if bad(calls["n"]):
                out = out * float("nan")
        return out, state

    monkeypatch.setattr(CharRNN, "forward", flaky)


class Log:
    def __init__(self):
        self.events = []

    def event(self, step, name, **fields):
        self.events.append((step, name, fields))


def make_guard(max_bad=3):
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=0.1, weight_decay=0.1, fused=True)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    log = Log()
    g = StepGuard(opt, scaler, torch.device("cpu"), 1, max_bad, log, lambda n, s: ChargenError(f"diverged {n} {s}"))
    return net, opt, g, log


def backward(net, scale=1.0):
    loss = net(torch.ones(3, 4)).square().mean() * scale
    net.zero_grad()
    loss.backward()
    return loss.detach(), torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)


def test_a_skipped_step_on_the_device_changes_nothing(on_device):
    net, opt, g, _ = make_guard()
    assert g.deferred
    loss, norm = backward(net)
    g.step(loss, norm, ResumeState())  # one real step: the optimizer has state
    before = {k: v.clone() for k, v in net.state_dict().items()}
    moments = {k: v.clone() for k, v in opt.state[net.weight].items()}
    loss, norm = backward(net, float("nan"))
    _, ok = g.step(loss, norm, ResumeState())
    assert isinstance(ok, torch.Tensor) and not ok
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    for k, v in opt.state[net.weight].items():
        assert torch.equal(v, moments[k]), k  # step count and both moments: as they were
    loss, norm = backward(net)
    _, ok = g.step(loss, norm, ResumeState())
    assert ok and not torch.equal(net.weight, before["weight"])


def test_the_counts_are_read_at_the_check_and_a_streak_stops_the_run(on_device):
    net, _, g, log = make_guard(max_bad=3)
    progress = ResumeState(step=7)
    for scale in (float("nan"), 1.0, float("inf"), float("nan")):
        g.step(*backward(net, scale), progress)
    assert log.events == []  # nothing read yet
    g.check(progress)
    assert log.events == [(7, "nonfinite", {"steps": 3, "streak": 2})] and progress.bad_streak == 2
    g.step(*backward(net, float("nan")), progress)  # the third in a row
    with pytest.raises(ChargenError, match="diverged 3 7"):
        g.check(progress)
    assert log.events[-1] == (7, "stopped", {"reason": "nonfinite"})


def test_the_carried_state_is_zeroed_on_the_device_where_a_step_was_skipped():
    from chargen.model.network import zero_where_not

    h, c = torch.full((1, 2, 3), 5.0), torch.full((1, 2, 3), float("nan"))
    assert zero_where_not(torch.tensor(True), (h, c))[0].eq(5).all()
    kept = zero_where_not(torch.tensor(False), (h, c))
    assert all(s.eq(0).all() for s in kept)  # NaN too: a select, not a product


def test_no_value_is_read_back_to_the_host_inside_a_step(text_file, tmp_path, on_device, monkeypatch):
    reads = {"in_step": 0, "steps": 0}
    inside = {"now": False}
    original_step = Trainer._step

    def step(self):
        inside["now"] = True
        try:
            original_step(self)
        finally:
            inside["now"] = False
        reads["steps"] += 1

    def counting(name):
        method = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            if inside["now"]:
                reads["in_step"] += 1
            return method(self, *args, **kwargs)

        return read

    monkeypatch.setattr(Trainer, "_step", step)
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    result = train(text_file, out=tmp_path / "run", max_steps=30, **TINY)
    assert reads["steps"] == 30 and reads["in_step"] == 0
    assert result.best_val_loss < 2.6  # it learns


def test_a_diverging_run_on_the_device_stops_at_the_next_check(text_file, tmp_path, on_device, monkeypatch):
    nan_losses(monkeypatch, lambda n: n in (5, 6) or n >= 33)  # two bad steps, then bad for good from step 32
    run = tmp_path / "run"
    with pytest.raises(ChargenError, match=r"training diverged: 8 steps in a row .* by step 40; the last good"):
        train(text_file, out=run, max_steps=100, checkpoint_every=10, **{**TINY, "log_every": 5})
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = [(r["step"], r.get("steps")) for r in rows if r.get("event") == "nonfinite"]
    assert events == [(5, 1), (10, 1), (35, 3), (40, 5)]  # read at the log lines, not per step
    losses = [r["loss"] for r in rows if "loss" in r]
    assert all(v == v for v in losses)  # skipped steps never reach the mean: no NaN in any line
    assert json.loads((run / "last" / "trainer.json").read_text())["step"] == 30
    for path in (run / "last" / "model.safetensors", run / "model.safetensors"):
        assert all(torch.isfinite(v).all() for v in load_file(str(path)).values())


@pytest.mark.parametrize("deferred", [False, True])
def test_a_log_interval_of_skipped_steps_has_no_loss(text_file, tmp_path, monkeypatch, deferred):
    if deferred:
        both = frozenset({"cpu", "cuda"})
        monkeypatch.setattr(guard, "DEFERRED_ON", both)
        monkeypatch.setattr(optimizer, "DEFERRED_ON", both)
    nan_losses(monkeypatch, lambda n: 5 <= n <= 8)  # steps 4-7 bad: the interval ending at step 8 is all skipped
    run = tmp_path / "run"
    train(text_file, out=run, max_steps=12, max_bad_steps=10, **{**TINY, "log_every": 4})
    rows = {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "lr" in r}
    assert "loss" in rows[4] and "loss" not in rows[8] and "loss" in rows[12]  # never a made-up 0.0
    assert rows[8]["grad_norm"] == rows[4]["grad_norm"]  # the last taken step's
