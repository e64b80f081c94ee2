"""The trainer: learning, run folder contents, exact resume, non-finite guard, refusals."""

import json
import math
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chargen import ChargenError
from chargen.config import TrainConfig
from chargen.model.network import CharRNN, ModelConfig
from chargen.runs.checkpoint import load_weights, read_tensors
from chargen.runs.folder import LAST_FILES
from chargen.training.budget import schedule_lr
from chargen.training.trainer import train
from conftest import TINY


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "mingru", "minlstm"])
def test_loss_falls_clearly_within_50_steps(text_file, tmp_path, cell):
    result = train(text_file, out=tmp_path / "run", cell=cell, max_steps=50, **TINY)
    rows = [r for r in metrics(tmp_path / "run") if "loss" in r]
    vocab = json.loads((tmp_path / "run" / "config.json").read_text())["model"]["vocab_size"]
    assert result.steps == 50
    assert rows[0]["loss"] < math.log(vocab) + 0.1  # starts near uniform
    assert result.best_val_loss < 2.2 < math.log(vocab)  # and ends far below it (uniform is ln V = 2.8)
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5


def test_run_folder_holds_exactly_the_documented_files_and_loads(text_file, tmp_path):
    run = tmp_path / "run"
    train(text_file, out=run, max_steps=30, **TINY)
    assert sorted(p.name for p in run.iterdir()) == [
        "config.json",
        "last",
        "metrics.jsonl",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert sorted(p.name for p in (run / "last").iterdir()) == sorted(LAST_FILES)
    config = json.loads((run / "config.json").read_text())
    assert {"format_version", "model", "train", "corpus", "versions"} <= config.keys()
    assert config["corpus"]["fingerprint"] and config["corpus"]["train_chars"] > 0
    model = CharRNN(ModelConfig.from_dict(config["model"]))
    load_weights(model, run / "model.safetensors")
    logits, _ = model(torch.zeros(1, 5, dtype=torch.long))
    assert logits.shape == (1, 5, config["model"]["vocab_size"])
    for row in metrics(run):
        assert "step" in row
    logged = [r for r in metrics(run) if "loss" in r]
    assert {"step", "loss", "lr", "grad_norm", "chars_per_sec", "elapsed"} <= logged[0].keys()
    evals = [r for r in metrics(run) if "val_loss" in r]
    assert evals and all(abs(r["val_bpc"] - r["val_loss"] / math.log(2)) < 1e-4 for r in evals)


def _snapshot(run: Path) -> dict:
    out = {}
    for name in ("model", "optimizer", "state"):
        for k, v in load_file(str(run / "last" / f"{name}.safetensors")).items():
            out[f"{name}/{k}"] = v
    return out


@pytest.mark.parametrize(
    "cell,extra",
    [
        ("lstm", dict(schedule="constant")),
        ("gru", dict(schedule="cosine", decay_steps=40)),
        ("rnn", dict(schedule="linear", decay_steps=40)),
        ("mingru", dict(schedule="cosine", decay_steps=40)),
        ("minlstm", dict(schedule="constant")),
        ("lstm", dict(schedule="cosine", decay_steps=40, layout="random")),
    ],
)
def test_resume_is_exact(text_file, tmp_path, cell, extra):
    opts = dict(TINY, cell=cell, dropout=0.2, num_layers=2, checkpoint_every=7, **extra)
    train(text_file, out=tmp_path / "straight", max_steps=40, **opts)
    train(text_file, out=tmp_path / "split", max_steps=20, **opts)
    train(text_file, out=tmp_path / "split", max_steps=40, resume=True)
    a, b = _snapshot(tmp_path / "straight"), _snapshot(tmp_path / "split")
    assert a.keys() == b.keys() and any(k.startswith("state/state.h") for k in a) == (extra.get("layout") != "random")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ta = json.loads((tmp_path / "straight" / "last" / "trainer.json").read_text())
    tb = json.loads((tmp_path / "split" / "last" / "trainer.json").read_text())
    assert ta["step"] == tb["step"] == 40 and ta["best_val_loss"] == tb["best_val_loss"]
    steps = [r["step"] for r in metrics(tmp_path / "split") if "loss" in r]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # no duplicated log lines


def test_nonfinite_steps_are_skipped_then_training_stops(text_file, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = CharRNN.forward

    def flaky(self, ids, state=None, targets=None):
        out, state = original(self, ids, state, targets)  # the loss, when training passes targets
        if self.training:
            calls["n"] += 1
            if calls["n"] in (5, 6) or calls["n"] >= 30:  # two bad steps, then bad for good
                out = out * float("nan")
        return out, state

    monkeypatch.setattr(CharRNN, "forward", flaky)
    run = tmp_path / "run"
    with pytest.raises(ChargenError, match=r"training diverged: 5 steps in a row .* last good checkpoint is in"):
        train(text_file, out=run, max_steps=100, checkpoint_every=10, **TINY)
    events = [r for r in metrics(run) if r.get("event") == "nonfinite"]
    assert [e["step"] for e in events[:2]] == [4, 5] and len(events) == 2 + 5
    trainer = json.loads((run / "last" / "trainer.json").read_text())
    assert trainer["step"] == 30  # the last checkpoint before it diverged
    for path in (run / "last" / "model.safetensors", run / "model.safetensors"):
        assert all(torch.isfinite(v).all() for v in load_file(str(path)).values())


@pytest.mark.parametrize("first_bad", [1, 3])  # before the first checkpoint, and after two
def test_a_validation_loss_that_is_not_a_number_stops_the_run_and_is_never_the_best(
    text_file, tmp_path, monkeypatch, first_bad
):
    from chargen.training import evaluation

    calls = {"n": 0}
    original = evaluation.mean_loss

    def nan_from(*args):
        calls["n"] += 1
        loss, bpc = original(*args)
        return (float("nan"), float("nan")) if calls["n"] >= first_bad else (loss, bpc)

    monkeypatch.setattr(evaluation, "mean_loss", nan_from)
    run = tmp_path / "run"
    if first_bad == 1:
        want = r"training diverged: the validation loss is nan at step 10; it had no checkpoint yet, so nothing is kept; lower --lr or --clip and start again$"
    else:
        want = r"training diverged: the validation loss is nan at step 30; the last good checkpoint is in .*/last; lower --lr or --clip and resume, or start again$"
    with pytest.raises(ChargenError, match=want):
        train(text_file, out=run, max_steps=100, **{**TINY, "eval_every": 10, "checkpoint_every": 10})
    if first_bad == 1:
        assert not run.exists()
    else:
        assert json.loads((run / "last" / "trainer.json").read_text())["best_step"] == 20
        assert all(math.isfinite(r["val_loss"]) for r in metrics(run) if "val_loss" in r)


def test_existing_run_is_not_clobbered(text_file, tmp_path):
    run = tmp_path / "run"
    train(text_file, out=run, max_steps=5, **TINY)
    with pytest.raises(ChargenError, match="already exists .*--resume.*--overwrite"):
        train(text_file, out=run, max_steps=5, **TINY)
    train(text_file, out=run, max_steps=6, overwrite=True, **TINY)
    assert json.loads((run / "last" / "trainer.json").read_text())["step"] == 6
    other = tmp_path / "notarun"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(ChargenError, match="not a chargen run folder"):
        train(text_file, out=other, max_steps=5, overwrite=True, **TINY)
    assert (other / "precious.txt").read_text() == "keep me"


def test_resume_refuses_another_corpus_or_changed_options(text_file, tmp_path):
    run = tmp_path / "run"
    train(text_file, out=run, max_steps=5, **TINY)
    other = tmp_path / "other.txt"
    other.write_text(text_file.read_text().upper())
    with pytest.raises(ChargenError, match="this corpus differs from the run.s: .*small.txt .*other.txt"):
        train(other, out=run, max_steps=10, resume=True)
    with pytest.raises(ChargenError, match="created with --hidden 32, not 64; a resumed run keeps its model"):
        train(text_file, out=run, max_steps=10, resume=True, hidden_size=64)
    with pytest.raises(ChargenError, match="created with --lowercase False, not True; .* keeps its corpus"):
        train(text_file, out=run, max_steps=10, resume=True, lowercase=True)
    with pytest.raises(ChargenError, match="--preset tiny applies when a run is created"):
        train(text_file, out=run, max_steps=10, resume=True, preset="tiny")
    # giving an option its value (the default, here) is not a change
    assert train(text_file, out=run, max_steps=6, resume=True, normalize="none", lr=0.01).steps == 6
    with pytest.raises(ChargenError, match="created with --lr 0.01, not 0.5"):
        train(text_file, out=run, max_steps=10, resume=True, lr=0.5)
    with pytest.raises(ChargenError, match="created without --decay-steps, not 50; only budget"):
        train(text_file, out=run, max_steps=10, resume=True, decay_steps=50)
    result = train(out=run, max_steps=10, resume=True)  # no source: the run's own
    assert result.steps == 10


def test_patience_stops_early(text_file, tmp_path):
    # lr so high that validation stops improving quickly
    result = train(
        text_file, out=tmp_path / "run", max_steps=2000, patience=2, **dict(TINY, lr=0.5, eval_every=5, clip=100.0)
    )
    assert result.stopped == "patience" and result.steps < 2000


def test_a_finished_run_is_not_trained_on_without_a_new_budget(text_file, tmp_path, cli):
    """Issue 8, item 7: a stop by --patience was forgotten, and a resume trained on over the best weights.
    Issue 31, item 7: a plain resume of a finished run is a success with nothing to do, not an error."""
    run = tmp_path / "run"
    first = train(text_file, out=run, max_steps=2000, patience=2, **dict(TINY, lr=0.5, eval_every=5, clip=100.0))
    assert first.stopped == "patience"
    assert json.loads((run / "last" / "trainer.json").read_text())["stopped"] == "patience"
    files = {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    done = train(out=run, resume=True)
    assert done.already_finished and (done.steps, done.stopped) == (first.steps, "patience")
    assert done.best_val_loss == first.best_val_loss and done.best_val_bpc == pytest.approx(first.best_val_bpc)
    code, out, err = cli("train", "--out", run, "--resume", "--no-progress")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"{run} already finished (stopped: patience at step {first.steps}): nothing to do; to train on, "
        "give it a new budget (--max-steps, --epochs or --max-time)"
    ]
    assert {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == files
    again = train(out=run, resume=True, max_steps=first.steps + 10)  # an explicit budget extends it
    assert again.steps == first.steps + 10 and not again.already_finished  # patience started over
    assert train(out=run, resume=True).already_finished


def test_an_extended_run_trains_at_the_rate_its_schedule_defines_for_the_new_steps(text_file, tmp_path):
    """Issue 31, item 7: a --max-steps 5 run resumed to 10 is still in its warmup (8 steps): the new steps
    ramp up to the peak, then take the floor: the cosine the run was created with (5 steps) is over. The
    rate at every step is schedule_lr's, the pure function the docs describe."""
    run = tmp_path / "run"
    opts = dict(TINY, warmup_steps=8, min_lr_ratio=0.25, log_every=1)
    train(text_file, out=run, max_steps=5, **opts)
    train(out=run, resume=True, max_steps=12)
    lrs = {r["step"]: r["lr"] for r in metrics(run) if "lr" in r}
    cfg = TrainConfig(**json.loads((run / "config.json").read_text())["train"])
    assert json.loads((run / "config.json").read_text())["schedule"]["decay_steps"] == 5
    assert [lrs[s] for s in range(1, 13)] == pytest.approx(
        [schedule_lr(cfg, s - 1, 0.0, 5, None) for s in range(1, 13)]
    )
    peak = TINY["lr"]
    assert [lrs[s] for s in range(1, 9)] == pytest.approx([peak * s / 8 for s in range(1, 9)])  # the ramp
    assert [lrs[s] for s in range(10, 13)] == pytest.approx([peak * 0.25] * 3)  # the floor


def test_config_file_and_preset_layering(text_file, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('preset = "tiny"\nhidden = 24\nmax-steps = 4\npreview-chars = 0\n')
    run = tmp_path / "run"
    train(text_file, out=run, config_file=cfg, num_layers=2)
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["hidden_size"] == 24  # file over preset
    assert config["model"]["num_layers"] == 2  # option over preset
    assert config["train"]["batch_size"] == 16  # from the tiny preset
    assert config["train"]["max_steps"] == 4
    bad = tmp_path / "bad.toml"
    bad.write_text("hiden = 3\n")
    with pytest.raises(ChargenError, match="unknown key 'hiden'"):
        train(text_file, out=tmp_path / "run2", config_file=bad)
    assert not (tmp_path / "run2").exists()


def test_max_time_budget(text_file, tmp_path):
    result = train(text_file, out=tmp_path / "run", max_time="1s", **TINY)
    # The final evaluation and checkpoint come out of the budget: the run ends a little before it.
    assert result.stopped == "budget" and 0.5 <= result.elapsed <= 1.5


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_trains_on_cuda_and_loads_on_cpu(text_file, tmp_path, precision):
    run = tmp_path / "run"
    result = train(text_file, out=run, max_steps=40, device="cuda", precision=precision, **TINY)
    assert result.best_val_loss < 2.5
    tensors = read_tensors(run / "model.safetensors", device="cpu")
    assert all(t.device.type == "cpu" for t in tensors.values())


def test_ctrl_c_checkpoints_prints_how_to_resume_and_resumes_exactly(text_file, tmp_path, monkeypatch, cli):
    from chargen.training.trainer import Trainer

    opts = dict(TINY, schedule="constant", checkpoint_every=100)
    train(text_file, out=tmp_path / "straight", max_steps=30, **opts)
    original = Trainer.train_step

    def interrupted(self, step):
        if step == 13:  # Ctrl-C arrives in the middle of step 13: the step finishes, then the run stops
            signal.raise_signal(signal.SIGINT)
        return original(self, step)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    run = tmp_path / "run"
    args = [
        "train",
        text_file,
        "--out",
        run,
        "--max-steps",
        "30",
        "--layers",
        "1",
        "--hidden",
        "32",
        "--batch-size",
        "8",
        "--bptt",
        "16",
        "--lr",
        "1e-2",
        "--warmup-steps",
        "0",
        "--preview-chars",
        "0",
        "--eval-every",
        "20",
        "--log-every",
        "10",
        "--schedule",
        "constant",
        "--checkpoint-every",
        "100",
    ]
    code, _, err = cli(*args)
    assert code == 130
    assert f"interrupted at step 14; checkpoint saved. Resume with: chargen train --out {run} --resume" in err
    assert "chargen train: interrupted" not in err  # one line says it all
    assert json.loads((run / "last" / "trainer.json").read_text())["step"] == 14
    monkeypatch.setattr(Trainer, "train_step", original)
    assert train(out=run, max_steps=30, resume=True).steps == 30
    a, b = _snapshot(tmp_path / "straight"), _snapshot(run)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("where", ["clip", "optimizer"])
def test_ctrl_c_inside_a_step_still_resumes_exactly(text_file, tmp_path, monkeypatch, where):
    """Ctrl-C while clipping, or just after the optimizer step: the step completes, then the run stops."""
    opts = dict(TINY, schedule="constant", checkpoint_every=100, dropout=0.1, num_layers=2)
    train(text_file, out=tmp_path / "straight", max_steps=12, **opts)
    calls = {"n": 0}
    if where == "clip":
        original = torch.nn.utils.clip_grad_norm_

        def patched(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 6:
                signal.raise_signal(signal.SIGINT)
            return original(*args, **kwargs)

        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", patched)
    else:
        original = torch.optim.AdamW.step

        def patched(self, *args, **kwargs):
            result = original(self, *args, **kwargs)
            calls["n"] += 1
            if calls["n"] == 6:
                signal.raise_signal(signal.SIGINT)
            return result

        monkeypatch.setattr(torch.optim.AdamW, "step", patched)
    with pytest.raises(KeyboardInterrupt):
        train(text_file, out=tmp_path / "run", max_steps=12, **opts)
    monkeypatch.undo()
    assert json.loads((tmp_path / "run" / "last" / "trainer.json").read_text())["step"] == 6
    train(out=tmp_path / "run", max_steps=12, resume=True)
    a, b = _snapshot(tmp_path / "straight"), _snapshot(tmp_path / "run")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _bf16_lstm_runs_here() -> bool:
    model = torch.nn.LSTM(4, 4, batch_first=True)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(torch.zeros(1, 2, 4))
        return True
    except RuntimeError:  # oneDNN without bf16 LSTM kernels on this CPU
        return False


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_carried_state_is_float32_and_a_bf16_run_resumes_in_fp32(text_file, tmp_path, cell, monkeypatch):
    """Issue 8, item 3: the state was kept and saved in the autocast dtype."""
    if cell == "lstm" and not _bf16_lstm_runs_here():
        pytest.skip("this CPU has no bf16 LSTM kernel")
    if cell == "gru":  # the CPU's GRU keeps float32 under autocast: make it return bf16, as a bf16 kernel does
        forward = CharRNN.forward

        def bf16_state(self, ids, state=None, targets=None):
            out, state = forward(self, ids, None if state is None else state.float(), targets)
            return out, state.to(torch.bfloat16) if torch.is_autocast_enabled("cpu") else state

        monkeypatch.setattr(CharRNN, "forward", bf16_state)
    run = tmp_path / "run"
    train(text_file, out=run, max_steps=6, precision="bf16", cell=cell, **TINY)
    state = load_file(str(run / "last" / "state.safetensors"))
    assert all(v.dtype == torch.float32 for k, v in state.items() if k.startswith("state."))
    assert train(out=run, max_steps=10, resume=True, precision="fp32").steps == 10


def test_grad_scaler_overflows_are_skipped_without_counting_as_divergence(text_file, tmp_path, monkeypatch):
    """Issue 8: with fp16's scaler, an overflow reset the state and five in a row aborted the run. Shown on
    the CPU with a scaler whose first scales are far too large (fp16 itself needs CUDA)."""

    class Overflowing(torch.amp.GradScaler):
        """A CPU grad scaler whose first three scaled losses overflow, as fp16 ones do on a GPU."""

        calls = 0

        def __init__(self, device, enabled=True):
            super().__init__("cpu", growth_interval=10**6)

        def scale(self, outputs):
            Overflowing.calls += 1
            scaled = super().scale(outputs)
            return scaled * float("inf") if Overflowing.calls <= 3 else scaled

    monkeypatch.setattr(torch.amp, "GradScaler", Overflowing)
    result = train(text_file, out=tmp_path / "run", max_steps=20, max_bad_steps=2, **TINY)
    events = [r for r in metrics(tmp_path / "run") if "event" in r]
    overflows = [r for r in events if r["event"] == "scale_overflow"]
    assert result.steps == 20 and len(overflows) == 3
    assert not [r for r in events if r["event"] == "nonfinite"]
    assert overflows[1]["scale"] < overflows[0]["scale"]  # the scale comes down each time


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name file descriptors")
def test_checkpoint_files_and_folders_are_fsynced_before_and_after_their_renames(text_file, tmp_path, monkeypatch):
    """Issue 8: a power cut must never leave an empty last/ with the old one gone."""
    import os

    run = tmp_path / "run"
    train(text_file, out=run, max_steps=3, **TINY)
    events = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename
    monkeypatch.setattr(
        os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))), real_fsync(fd))
    )
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("move", str(a), str(b))), real_replace(a, b)))
    monkeypatch.setattr(os, "rename", lambda a, b: (events.append(("move", str(a), str(b))), real_rename(a, b)))
    train(out=run, max_steps=6, resume=True)
    moves = [i for i, e in enumerate(events) if e[0] == "move"]
    for i in moves:
        src, dst = events[i][1], events[i][2]
        if Path(dst).name in LAST_FILES:  # a file: its bytes were flushed before the rename
            assert ("fsync", src) in events[:i], (src, dst)
        if dst == str(run / "last"):  # the swap: the run folder is flushed after it
            assert ("fsync", str(run)) in events[i + 1 :], events[i:]
    assert any(e[0] == "move" and e[2] == str(run / "last") for e in events)


def test_a_finished_run_takes_a_new_budget_of_any_kind_and_has_nothing_to_do_for_a_spent_one(text_file, tmp_path):
    """A spent budget was an error (exit 2): a script that re-ran the same resume command failed the second
    time. Now it is nothing to do, as a plain resume of a finished run is."""
    run = tmp_path / "run"
    train(text_file, out=run, max_steps=8, **TINY)
    assert train(out=run, resume=True, epochs=0.5).steps > 8  # the epochs replace the old --max-steps 8
    steps = json.loads((run / "last" / "trainer.json").read_text())["step"]
    assert train(out=run, resume=True, max_steps=steps + 4).steps == steps + 4
    for spent in (steps, steps + 4):
        again = train(out=run, resume=True, max_steps=spent)
        assert again.already_finished and again.steps == steps + 4


def test_bf16_where_the_cpu_cannot_is_one_clear_error(text_file, tmp_path):
    if _bf16_lstm_runs_here():
        pytest.skip("this CPU runs bf16 LSTMs")
    with pytest.raises(ChargenError, match="--precision bf16 does not run a LSTM on this cpu .*use --precision fp32"):
        train(text_file, out=tmp_path / "run", max_steps=3, precision="bf16", **TINY)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "native,cell,want",
    [
        ("1", "gru", "bf16"),
        ("0", "gru", "fp32"),
        ("1", "lstm", "fp32"),
        ("0", "lstm", "fp32"),
        ("1", "rnn", "fp32"),
        ("1", "mingru", "bf16"),
        ("1", "minlstm", "bf16"),
        ("0", "minlstm", "fp32"),
    ],
)
def test_auto_precision_on_the_cpu_is_bf16_for_a_gru_or_a_min_cell_where_the_cpu_has_native_bf16(
    native, cell, want, monkeypatch
):
    from chargen.model.devices import native_bf16
    from chargen.model.precision import resolve_precision

    monkeypatch.setenv("CHARGEN_CPU_BF16", native)
    assert native_bf16() is (native == "1")
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, cell) == want
    for given in ("fp32", "bf16"):  # a precision asked for is kept, whatever the CPU
        assert resolve_precision(given, cpu, cell) == given


def test_the_bf16_probe_answers_without_the_override(monkeypatch):
    from chargen.model.devices import native_bf16

    monkeypatch.delenv("CHARGEN_CPU_BF16")
    assert isinstance(native_bf16(), bool)
    probe = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    for empty in ("", "  "):  # set but empty: the probe decides
        monkeypatch.setenv("CHARGEN_CPU_BF16", empty)
        assert native_bf16() is probe
    monkeypatch.setenv("CHARGEN_CPU_BF16", " 1 ")
    assert native_bf16() is True


@pytest.mark.parametrize("value", ["yes", "false", "2", "no"])
def test_a_cpu_bf16_override_that_is_not_0_or_1_is_one_clear_error(value, text_file, tmp_path, monkeypatch, cli):
    monkeypatch.setenv("CHARGEN_CPU_BF16", value)
    code, out, err = cli("train", text_file, "--out", tmp_path / "run", "--cell", "gru", "--max-steps", "2")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"chargen train: error: CHARGEN_CPU_BF16 must be 0 or 1 (or unset, to ask the CPU), got {value!r}"
    ]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("native", ["1", "0"])
def test_a_run_says_what_auto_precision_chose_and_a_resume_chooses_again(text_file, tmp_path, native, monkeypatch, cli):
    monkeypatch.setenv("CHARGEN_CPU_BF16", native)
    want = "bf16" if native == "1" else "fp32"
    run = tmp_path / "run"
    code, out, _ = cli(
        "train",
        text_file,
        "--out",
        run,
        "--cell",
        "gru",
        "--max-steps",
        "6",
        "--layers",
        "1",
        "--hidden",
        "32",
        "--batch-size",
        "8",
        "--bptt",
        "16",
        "--preview-chars",
        "0",
    )
    assert code == 0 and "trained 6 steps in" in out and f"s on cpu, {want} (" in out
    started = [r for r in metrics(run) if r.get("event") == "started"]
    assert [(r["device"], r["precision"]) for r in started] == [("cpu", want)]
    assert json.loads((run / "config.json").read_text())["train"]["precision"] == "auto"  # the choice, not its result
    monkeypatch.setenv("CHARGEN_CPU_BF16", "0" if native == "1" else "1")  # the same run on another CPU
    result = train(out=run, resume=True, max_steps=9)
    assert result.steps == 9 and result.precision == ("fp32" if native == "1" else "bf16")
    started = [r for r in metrics(run) if r.get("event") == "started"]
    assert [r["precision"] for r in started] == [want, result.precision]


def test_auto_keeps_an_lstm_in_fp32_on_a_cpu_with_native_bf16(text_file, tmp_path, monkeypatch):
    monkeypatch.setenv("CHARGEN_CPU_BF16", "1")
    result = train(text_file, out=tmp_path / "run", cell="lstm", max_steps=4, **TINY)
    assert result.precision == "fp32"


def test_a_run_whose_cosine_reached_a_floor_of_0_is_not_resumed_into_steps_that_change_nothing(
    text_file, tmp_path, cli
):
    run = tmp_path / "run"
    opts = dict(TINY, warmup_steps=2, min_lr_ratio=0.0)
    train(text_file, out=run, max_steps=10, **opts)
    before = {p.name: p.read_bytes() for p in sorted((run / "last").iterdir())}
    code, _, err = cli("train", "--out", run, "--resume", "--max-steps", "400")
    assert code == 2
    assert err.strip().splitlines() == [
        f"chargen train: error: {run} is at step {json.loads((run / 'last' / 'trainer.json').read_text())['step']}, "
        "past the end of its learning-rate decay, where --min-lr-ratio 0 puts the learning rate at 0: more steps would change "
        f"nothing; to train on, start a new run from its weights: chargen train {text_file} --init-from {run} "
        "--out NEW_RUN"  # the run's own text: without it the new run would train on the default corpus
    ]
    assert {p.name: p.read_bytes() for p in sorted((run / "last").iterdir())} == before
    # with a floor above 0 the same resume trains on, at the floor
    train(text_file, out=tmp_path / "floor", max_steps=10, **dict(opts, min_lr_ratio=0.1))
    assert train(out=tmp_path / "floor", resume=True, max_steps=14).steps == 14
    assert [r["lr"] for r in metrics(tmp_path / "floor") if "lr" in r][-1] == pytest.approx(1e-3)


def test_a_text_the_model_predicts_perfectly_scores_0_not_minus_0(tmp_path, cli):
    """One character repeated: every prediction is certain, and the loss is +0.0 in the metrics, the result and
    the printed line (it printed -0.0000 before)."""
    text = tmp_path / "a.txt"
    text.write_text("a" * 4000, encoding="utf-8")
    code, out, err = cli(
        "train",
        text,
        "--out",
        tmp_path / "run",
        "--layers",
        "1",
        "--hidden",
        "8",
        "--batch-size",
        "4",
        "--bptt",
        "16",
        "--max-steps",
        "4",
        "--eval-every",
        "2",
        "--preview-chars",
        "0",
        "--no-progress",
    )
    assert code == 0, err
    vals = [r["val_loss"] for r in metrics(tmp_path / "run") if "val_loss" in r]
    assert vals and all(v == 0.0 and math.copysign(1.0, v) == 1.0 for v in vals)
    assert "best val 0.0000 nats/char (0.0000 bpc)" in out + err and "-0.0000" not in out + err


def test_an_extended_time_run_stops_where_its_rate_reaches_a_floor_of_0(text_file, tmp_path, cli):
    """Issue 30's audit: a finished 20 s run resumed with --max-time 30s trained its last 38 steps at rate 0.
    Now it stops there ("stopped: schedule"), and a plain resume after has nothing to do."""
    run = tmp_path / "run"
    opts = dict(TINY, min_lr_ratio=0.0, log_every=1, eval_every=1000)
    train(text_file, out=run, max_time=2.0, **opts)
    again = train(out=run, resume=True, max_time=60.0)
    assert again.stopped == "schedule" and again.elapsed < 10
    rows = metrics(run)
    assert rows[-1] == {"step": again.steps, "event": "stopped", "reason": "schedule"}
    assert all(r["lr"] > 0 for r in rows if "lr" in r)  # no step was taken at rate 0
    done = train(out=run, resume=True)
    assert done.already_finished
    assert done.finished_message() == (  # not "give it a new budget", which would be refused
        f"{run} already finished (stopped: schedule at step {again.steps}): nothing to do; its learning rate "
        f"has reached 0, so to train on, start a new run from its weights: chargen train SOURCE --init-from {run} "
        "--out NEW_RUN"
    )
    with pytest.raises(ChargenError, match=r"past the end of its learning-rate decay, where --min-lr-ratio 0"):
        train(out=run, resume=True, max_time=90.0)


@pytest.mark.parametrize(
    "device,layers,dropout,clock,why",
    [
        ("cpu", 2, 0.3, False, None),  # exact: the CPU with a schedule of steps
        ("cpu", 1, 0.0, True, "the learning rate follows the clock"),
        ("cuda", 2, 0.3, False, "cuDNN's dropout between the layers keeps a random state of its own"),
        ("cuda", 1, 0.3, False, "CUDA kernels (the embedding's gradient among them) add in an order that varies"),
        ("cuda", 2, 0.0, False, "CUDA kernels"),
        ("mps", 1, 0.0, False, "mps kernels do not promise the same bits"),
    ],
)
def test_where_a_resume_is_bit_exact(device, layers, dropout, clock, why):
    from chargen.training.checkpointing import inexact_resume

    got = inexact_resume(device, layers, dropout, clock)
    assert got is None if why is None else got.startswith(why)


def test_the_started_event_says_whether_a_resume_would_be_exact(text_file, tmp_path, capsys):
    train(text_file, out=tmp_path / "steps", max_steps=4, **TINY)
    train(text_file, out=tmp_path / "clock", max_time="2s", **TINY)
    for name, exact in (("steps", True), ("clock", False)):
        started = [r for r in metrics(tmp_path / name) if r.get("event") == "started"]
        assert started[0]["exact_resume"] is exact
    capsys.readouterr()
    train(text_file, out=tmp_path / "clock", resume=True, max_time="3s")
    assert (
        "resumed on cpu: the continuation is close, not bit for bit (the learning rate follows"
        in capsys.readouterr().err
    )
