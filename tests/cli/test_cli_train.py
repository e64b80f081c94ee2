"""chargen train / info through the command line: bad input is one line, exit 2, no run folder."""

import json
import shutil

import pytest

from conftest import one_error_line

FAST = [
    "--layers",
    "1",
    "--hidden",
    "16",
    "--batch-size",
    "4",
    "--bptt",
    "8",
    "--preview-chars",
    "0",
    "--warmup-steps",
    "0",
]


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("abcdefghij klmnop\n" * 300)
    return p


def test_train_then_info(cli, corpus, tmp_path):
    run = tmp_path / "run"
    code, out, err = cli("train", corpus, "--out", run, "--max-steps", "12", "--eval-every", "6", *FAST)
    assert code == 0, err
    assert "trained 12 steps" in out and f"chargen sample {run}" in out
    assert "val " in err and "--- sample ---" not in err  # previews off
    code, out, err = cli("info", run, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["steps"] == 12 and info["model"]["hidden_size"] == 16
    assert info["parameters"] == sum(
        p.numel()
        for p in __import__("chargen.model.network", fromlist=["x"])
        .CharRNN(__import__("chargen.model.network", fromlist=["x"]).ModelConfig.from_dict(info["model"]))
        .parameters()
    )
    assert info["best_val_bpc"] == pytest.approx(info["best_val_loss"] / 0.6931471805599453)
    code, out, _ = cli("info", run)
    assert code == 0 and "LSTM 1x16" in out and "best validation" in out


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--hidden", "0"], ["argument --hidden: must be at least 1, got 0"]),
        (["--layers", "-2"], ["argument --layers: must be at least 1, got -2"]),
        (["--batch-size", "0"], ["argument --batch-size: must be at least 1"]),
        (["--bptt", "-5"], ["argument --bptt: must be at least 1"]),
        (["--lr", "0"], ["argument --lr: must be in (0, 100], got 0.0"]),
        (["--lr", "nan"], ["argument --lr: must be a finite number"]),
        (["--max-steps", "0"], ["argument --max-steps: must be at least 1"]),
        (["--epochs", "-1"], ["argument --epochs: must be in (0, 1000000000], got -1.0"]),
        (["--max-time", "soon"], ["argument --max-time: must be a duration such as 90s, 5m or 1h"]),
        (["--dropout", "1.0"], ["argument --dropout: must be in [0, 1), got 1.0"]),
        (["--dropout", "-0.5"], ["argument --dropout: must be in [0, 1), got -0.5"]),
        (["--cell", "transformer"], ["invalid choice: 'transformer'"]),
        (["--device", "tpu"], ["invalid choice: 'tpu'"]),
        (["--preset", "huge"], ["unknown preset 'huge'"]),
        (["--batch-size", "64", "--bptt", "128"], ["too short for one batch", "needs at least 8,193"]),
        (["--config", "/no/such.toml"], ["config file /no/such.toml does not exist"]),
        (["--hidden", "ten"], ["argument --hidden: expected a whole number, got 'ten'"]),
        (["--seed", "-5"], ["argument --seed: must be in [0, 2**63 - 1], got -5"]),  # issue 8, item 5
    ],
)
def test_bad_train_input(cli, corpus, tmp_path, args, fragments):
    run = tmp_path / "run"
    base = list(FAST)
    code, _out, err = cli("train", corpus, "--out", run, "--max-steps", "3", *base, *args)
    assert code == 2
    one_error_line(err, *fragments)
    assert not run.exists()  # nothing half-made


def test_cuda_on_a_machine_without_it(  # the tests see no CUDA device (conftest), on any machine
    cli, corpus, tmp_path
):
    code, _, err = cli("train", corpus, "--out", tmp_path / "run", "--device", "cuda", *FAST)
    assert code == 2
    one_error_line(err, "--device cuda asked for, but this machine has no CUDA device")
    assert not (tmp_path / "run").exists()


def test_missing_source_and_existing_run(cli, corpus, tmp_path):
    code, _, err = cli("train", tmp_path / "nope.txt", "--out", tmp_path / "run", *FAST)
    assert code == 2
    one_error_line(err, "nope.txt does not exist")
    run = tmp_path / "run"
    assert cli("train", corpus, "--out", run, "--max-steps", "2", *FAST)[0] == 0
    code, _, err = cli("train", corpus, "--out", run, "--max-steps", "2", *FAST)
    assert code == 2
    one_error_line(err, "already exists", "--resume", "--overwrite")


@pytest.mark.parametrize(
    "damage,fragments",
    [
        ("no_last", ["no complete last/ checkpoint"]),
        ("bad_config", ["config.json is not readable JSON"]),
        ("truncated_weights", ["last/model.safetensors is damaged: its data does not match the checksum"]),
        ("bad_trainer", ["trainer.json is not readable JSON"]),
        ("missing_tokenizer", ["not a complete run folder (missing tokenizer.json)"]),
        ("no_dir", ["does not exist"]),
    ],
)
def test_resume_of_a_damaged_run(cli, corpus, tmp_path, damage, fragments):
    import shutil

    run = tmp_path / "run"
    assert cli("train", corpus, "--out", run, "--max-steps", "4", *FAST)[0] == 0
    if damage == "no_last":
        shutil.rmtree(run / "last")
    elif damage == "bad_config":
        (run / "config.json").write_text("{oops")
    elif damage == "truncated_weights":
        data = (run / "last" / "model.safetensors").read_bytes()
        (run / "last" / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "bad_trainer":
        (run / "last" / "trainer.json").write_text("not json")
    elif damage == "missing_tokenizer":
        (run / "tokenizer.json").unlink()
    elif damage == "no_dir":
        shutil.rmtree(run)
    code, _, err = cli("train", corpus, "--out", run, "--max-steps", "8", "--resume")
    assert code == 2
    one_error_line(err, *fragments)


def test_info_of_a_missing_run(cli, tmp_path):
    code, _, err = cli("info", tmp_path / "nothing")
    assert code == 2
    one_error_line(err, "does not exist")


def test_a_run_stopped_before_its_first_checkpoint_says_to_start_it_again(cli, corpus, tmp_path):
    """kill -9 before the first checkpoint leaves config, tokenizer, metrics (and best weights) but no last/:
    there is nothing to resume, so the message says how to start again, and that works."""
    run = tmp_path / "run"
    assert cli("train", corpus, "--out", run, "--max-steps", "2", *FAST)[0] == 0
    shutil.rmtree(run / "last")
    code, out, err = cli("train", corpus, "--out", run, "--max-steps", "2", *FAST)
    assert code == 2 and out == ""
    one_error_line(err, f"{run} holds a run that stopped before its first checkpoint; pass --overwrite")
    assert sorted(p.name for p in run.iterdir()) == [
        "config.json",
        "metrics.jsonl",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert cli("train", corpus, "--out", run, "--max-steps", "2", "--overwrite", *FAST)[0] == 0
    assert (run / "last").is_dir()


def test_a_run_without_a_validation_loss_says_why_there_may_be_none(cli, corpus, tmp_path):
    code, out, _ = cli("train", corpus, "--out", tmp_path / "run", "--max-steps", "2", "--val-fraction", "0", *FAST)
    assert code == 0
    assert "; no validation loss (no validation split, or no evaluation fitted in the time budget)" in out
