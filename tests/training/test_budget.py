"""The step budget and the learning-rate schedule: warmup, cosine in steps or on the clock, the floor."""

from __future__ import annotations

import itertools

import pytest

from chargen.config import TrainConfig
from chargen.training.budget import schedule_lr, step_budget


def test_step_budget_is_the_smaller_of_steps_and_epochs():
    assert step_budget(TrainConfig(max_steps=50, epochs=2.0), 30) == 50
    assert step_budget(TrainConfig(max_steps=50, epochs=1.5), 30) == 45
    assert step_budget(TrainConfig(max_time=60.0), 30) is None


def test_a_step_cosine_starts_after_a_plain_linear_warmup():
    cfg = TrainConfig(lr=1e-2, warmup_steps=10, min_lr_ratio=0.0)
    assert [schedule_lr(cfg, s, 1e9, 110, None) for s in range(10)] == [1e-2 * (s + 1) / 10 for s in range(10)]
    assert schedule_lr(cfg, 10, 0.0, 110, None) == 1e-2  # the cosine's start: the peak
    assert schedule_lr(cfg, 60, 0.0, 110, None) == pytest.approx(5e-3)  # half way: half the peak
    assert schedule_lr(cfg, 110, 0.0, 110, None) == 0.0


def test_a_time_budget_ends_at_the_floor_even_inside_the_warmup():
    """The warmup counts steps, a --max-time cosine follows the clock: a budget that makes fewer steps than
    the warmup still ends at the floor (it stood at the ramp's value, near the peak, before)."""
    cfg = TrainConfig(lr=1.3e-2, warmup_steps=50, min_lr_ratio=0.0)
    assert schedule_lr(cfg, 30, 30.0, None, 30.0) == 0.0
    floor = TrainConfig(lr=1.3e-2, warmup_steps=50, min_lr_ratio=0.1)
    assert schedule_lr(floor, 30, 30.0, None, 30.0) == pytest.approx(1.3e-3)
    # early in the budget the ramp is the lower of the two, exactly as before
    assert [schedule_lr(cfg, s, 0.01 * s, None, 300.0) for s in range(5)] == [1.3e-2 * (s + 1) / 50 for s in range(5)]


def test_leaving_the_warmup_under_a_time_budget_never_jumps():
    """Steps that take a third of a second each through a 30 s budget: a 50-step warmup ends 17 s in, when
    the clock's cosine is well below the peak; the rate rises, then falls, never moving by more than one
    ramp step at a time, and never above the clock's cosine."""
    cfg = TrainConfig(lr=1.3e-2, warmup_steps=50, min_lr_ratio=0.0)
    rates = [schedule_lr(cfg, s, s / 3, None, 30.0) for s in range(91)]
    no_warmup = TrainConfig(lr=1.3e-2, warmup_steps=0, min_lr_ratio=0.0)
    cosine = [schedule_lr(no_warmup, s, s / 3, None, 30.0) for s in range(91)]
    assert all(r <= c for r, c in zip(rates, cosine))
    assert max(abs(b - a) for a, b in itertools.pairwise(rates)) <= 1.3e-2 / 50 + 1e-12
    peak = rates.index(max(rates))
    assert 0 < peak < 50 and rates[peak:] == sorted(rates[peak:], reverse=True) and rates[-1] == 0.0
    assert rates[50:] == cosine[50:]


def test_a_constant_schedule_keeps_its_warmup_ramp():
    cfg = TrainConfig(lr=1e-2, warmup_steps=4, schedule="constant")
    assert [schedule_lr(cfg, s, 1e9, None, 10.0) for s in range(6)] == [2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2]


def test_a_linear_schedule_falls_in_a_straight_line_to_its_floor():
    """--schedule linear: from the peak after the warmup to the floor at the end, by equal steps, in steps
    and on the clock; it meets the cosine at both ends and the middle, and lies below it in the first half."""
    cfg = TrainConfig(lr=1e-2, warmup_steps=10, min_lr_ratio=0.1, schedule="linear")
    rates = [schedule_lr(cfg, s, 0.0, 110, None) for s in range(10, 111)]
    assert rates[0] == pytest.approx(1e-2) and rates[-1] == pytest.approx(1e-3)
    assert all(b - a == pytest.approx(-9e-5) for a, b in itertools.pairwise(rates))
    cosine = TrainConfig(lr=1e-2, warmup_steps=10, min_lr_ratio=0.1)
    assert schedule_lr(cfg, 60, 0.0, 110, None) == pytest.approx(schedule_lr(cosine, 60, 0.0, 110, None))
    assert all(schedule_lr(cfg, s, 0.0, 110, None) < schedule_lr(cosine, s, 0.0, 110, None) for s in range(11, 60))
    clock = TrainConfig(lr=1e-2, warmup_steps=0, min_lr_ratio=0.0, schedule="linear")
    assert [schedule_lr(clock, 0, t, None, 40.0) for t in (0.0, 10.0, 30.0, 40.0, 50.0)] == pytest.approx(
        [1e-2, 7.5e-3, 2.5e-3, 0.0, 0.0]
    )
