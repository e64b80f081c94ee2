"""chargen plot (issue 12): runs' curves read exactly from metrics.jsonl, drawn into a PNG that is whole,
of the asked size and not blank; every bad input is one line and exit status 2."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import struct
from pathlib import Path

import pytest

import chargen
from chargen.runs.plot import plot, run_curves

matplotlib = pytest.importorskip("matplotlib", reason="chargen[plot] is not installed")

TINY = dict(
    num_layers=1,
    hidden_size=16,
    batch_size=8,
    bptt=16,
    lr=1e-2,
    warmup_steps=0,
    preview_chars=0,
    eval_chars=2000,
    eval_every=10,
    log_every=5,
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two short runs, one of them stopped at step 20 and resumed to 40."""
    d = tmp_path_factory.mktemp("plot")
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran"]
    text = d / "text.txt"
    text.write_text("\n".join(" ".join(rng.choice(words) for _ in range(8)) for _ in range(3000)))
    chargen.train(text, out=d / "first", max_steps=30, **TINY)
    chargen.train(text, out=d / "second", max_steps=20, **TINY)
    chargen.train(text, out=d / "second", max_steps=40, resume=True, **TINY)
    return {"first": d / "first", "second": d / "second"}


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("x", ["step", "time", "chars"])
def test_curves_are_the_metrics_rows_in_the_chosen_unit(runs, x):
    run = runs["first"]
    rows = [r for r in metrics(run) if "event" not in r]
    chars_per_step = TINY["batch_size"] * TINY["bptt"]
    unit = {
        "step": lambda r: r["step"],
        "chars": lambda r: r["step"] * chars_per_step / 1e6,
        "time": lambda r: r["elapsed"] / 60,
    }[x]
    c = run_curves(run, x)
    assert c.name == "first" and c.resumed == []
    assert c.val == [pytest.approx((unit(r), r["val_bpc"])) for r in rows if "val_bpc" in r] and len(c.val) == 3
    assert c.train == [pytest.approx((unit(r), r["loss"] / math.log(2))) for r in rows if "loss" in r]
    assert c.best == min(c.val, key=lambda p: p[1])


def test_a_resumed_run_is_marked_where_it_resumed(runs):
    c = run_curves(runs["second"])
    assert c.resumed == [20]
    steps = [s for s, _ in c.val]
    assert steps == sorted(set(steps)) and steps[-1] == 40


def test_what_a_lost_attempt_logged_after_the_resume_point_is_dropped(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["first"], run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    # an attempt that got to step 30 and died; the run resumed from its checkpoint at 20 and logged 30 again
    lines += ['{"step": 20, "event": "started", "at": 1.0}', '{"step": 30, "loss": 9.0, "elapsed": 99.0}']
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    c = run_curves(run)
    assert [s for s, _ in c.train if s > 20] == [30] and c.train[-1] == (30, pytest.approx(9.0 / math.log(2)))
    assert [s for s, _ in c.val] == [10, 20] and c.resumed == [20]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("x", ["step", "time", "chars"])
def test_the_png_is_whole_of_its_size_and_shows_both_runs(runs, tmp_path, x):
    out = plot([runs["first"], runs["second"]], tmp_path / "curves.png", x=x, size=(8, 4), dpi=100)
    assert _png_size(out) == (800, 400)
    pixels = matplotlib.image.imread(out)[..., :3]
    assert (pixels.min(axis=-1) < 0.9).mean() > 0.02  # ink, not a blank page

    def has(colour: str) -> bool:  # the runs' colours: matplotlib's C0 and C1, at full strength somewhere
        rgb = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
        return bool((abs(pixels - rgb).max(axis=-1) < 0.02).any())

    assert has(matplotlib.colors.to_hex("C0")) and has(matplotlib.colors.to_hex("C1"))
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_the_command_draws_runs_and_names_the_file(cli, runs, tmp_path):
    out = tmp_path / "both.png"
    code, _, err = cli("plot", runs["first"], runs["second"], "-o", out, "--x", "chars")
    assert code == 0 and err.strip() == f"chargen plot: wrote {out}" and _png_size(out) == (900, 500)


def test_runs_of_the_same_name_are_told_apart_by_path(runs, tmp_path):
    other = tmp_path / "elsewhere" / "first"
    shutil.copytree(runs["first"], other)
    from chargen.runs.plot import _names

    assert _names([runs["first"], other]) == [str(runs["first"]), str(other)]
    assert _names([runs["first"], runs["second"]]) == ["first", "second"]


def test_bad_inputs_are_one_line(cli, runs, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    shutil.copytree(runs["first"], empty)
    (empty / "metrics.jsonl").write_text('{"step": 0, "event": "started", "at": 1.0}\n')
    a_file = tmp_path / "file"
    a_file.write_text("x")
    (tmp_path / "taken.png").mkdir()
    cases = [
        ([empty], f"{empty} has no metrics yet"),
        ([tmp_path / "nothing"], "nothing"),
        ([runs["first"], "-o", tmp_path / "curves.svg"], "-o must name a .png file"),
        ([runs["first"], "-o", a_file / "curves.png"], f"{a_file} is not a folder"),
        ([runs["first"], "-o", tmp_path / "taken.png"], f"cannot write {tmp_path / 'taken.png'}"),
        ([runs["first"], "--x", "epochs"], "argument --x: invalid choice"),
    ]
    for args, fragment in cases:
        code, _out, err = cli("plot", *args)
        lines = err.strip().splitlines()
        assert code == 2 and fragment in lines[-1] and "Traceback" not in err, (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "taken.png"]  # nothing half-written

    import builtins

    real = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    code, _, err = cli("plot", runs["first"], "-o", tmp_path / "x.png")
    assert (
        code == 2
        and err.strip().splitlines()[-1]
        == 'chargen plot: error: chargen plot needs its extra: pip install "chargen[plot]"'
    )


def test_broken_rows_are_skipped_and_times_interpolate(runs, tmp_path, cli):
    run = tmp_path / "run"
    shutil.copytree(runs["first"], run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write(
            '{"step": "7", "event": "started"}\n{"step": null, "event": "started"}\n'
            '{"step": 31, "loss": 1e308, "elapsed": 1.0}\n{"step": 32, "val_bpc": -1e300}\n'
        )
    c = run_curves(run)
    assert all(abs(y) < 1e6 for _, y in c.train + c.val) and c.resumed == []
    code, _, err = cli("plot", run, "-o", tmp_path / "ok.png", "--x", "time")
    assert code == 0, err
    from chargen.runs.plot import _interpolate

    points = [(10, 1.0), (20, 3.0), (20, 3.0), (40, 4.0)]
    for step, want in [(0, 0.0), (5, 0.5), (10, 1.0), (15, 2.0), (20, 3.0), (30, 3.5), (40, 4.0), (99, 4.0)]:
        assert _interpolate(points, step) == pytest.approx(want), step


def test_time_needs_times_and_a_run_named_twice_is_drawn_once(runs, tmp_path, cli):
    run = tmp_path / "run"
    shutil.copytree(runs["first"], run)
    rows = [{k: v for k, v in r.items() if k != "elapsed"} for r in metrics(run)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = cli("plot", run, "-o", tmp_path / "t.png", "--x", "time")
    assert code == 2 and "have no wall-clock times; plot it with --x step" in err.strip().splitlines()[-1]
    once, twice = plot([runs["first"]], tmp_path / "1.png"), plot([runs["first"], runs["first"]], tmp_path / "2.png")
    assert once.read_bytes() == twice.read_bytes()
