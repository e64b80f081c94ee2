"""Fine-tuning (issue 12): --init-from starts a new run from a base run's weights and shape; the base's ids
never move, characters it lacks are added after them (or read as <unk> with --keep-vocab), and the first
loss on the base's characters is the base's."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import chargen
from chargen import ChargenError, Sampler
from chargen.model.network import CharRNN
from chargen.runs.checkpoint import init_from_base, load_weights

SHAPE = dict(num_layers=1, hidden_size=32)
TRAIN = dict(batch_size=8, bptt=16, lr=1e-2, warmup_steps=0, preview_chars=0, eval_every=20, eval_chars=2000)


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ft")
    (d / "base.txt").write_text("the cat sat on the mat and the dog ran home\n" * 300)
    (d / "new.txt").write_text("the c\u00e4t s\u00e4\u00df on the mat and the d\u00f6g ran h\u00fcme zq\n" * 300)
    return {"base": d / "base.txt", "new": d / "new.txt", "dir": d}


@pytest.fixture(scope="module")
def base(texts) -> Path:
    chargen.train(texts["base"], out=texts["dir"] / "base", max_steps=60, **SHAPE, **TRAIN)
    return texts["dir"] / "base"


def config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def test_the_base_ids_stay_and_new_characters_come_after(texts, base, tmp_path):
    out = tmp_path / "ft"
    chargen.train(texts["new"], out=out, max_steps=20, init_from=base, **TRAIN)
    old, new = Sampler.load(base).vocab.chars, Sampler.load(out).vocab.chars
    assert new[: len(old)] == old and new[len(old) :] == sorted("\u00e4\u00df\u00f6\u00fczq")
    c = config(out)
    assert c["model"] == {**config(base)["model"], "vocab_size": len(new)}
    init = c["init"]
    assert init["from"] == str(base) and init["checkpoint"] == "best" and init["step"] == 60
    assert init["corpus_fingerprint"] == config(base)["corpus"]["fingerprint"] and init["added_chars"] == 6
    assert init["best_val_loss"] == pytest.approx(chargen.runs.info.run_info(base)["best_val_loss"])


def test_keep_vocab_reads_new_characters_as_unk_and_counts_them(texts, base, tmp_path, cli):
    out = tmp_path / "kept"
    code, _, err = cli(
        "train",
        texts["new"],
        "--out",
        out,
        "--init-from",
        base,
        "--keep-vocab",
        "--max-steps",
        "5",
        "--batch-size",
        "8",
        "--bptt",
        "16",
        "--preview-chars",
        "0",
        "--no-progress",
    )
    old, new = Sampler.load(base).vocab.chars, Sampler.load(out).vocab.chars
    assert code == 0 and new == old + ["<unk>"]
    unknown = sum(text.count(ch) for text in [texts["new"].read_text()] for ch in "\u00e4\u00df\u00f6\u00fczq")
    assert config(out)["init"]["unknown_chars"] == unknown and config(out)["init"]["added_chars"] == 0
    assert f"{unknown:,} characters of the corpus are not in its vocabulary and read as <unk>" in err


def test_the_first_loss_on_the_base_characters_is_the_bases(texts, base):
    """New rows take almost no probability: on text of the base's characters, the fine-tune's model at
    step 0 scores what the base scores (within NEW_CHAR_PROB per new character)."""
    base_cfg = Sampler.load(base, backend="torch").model.config
    base_model = CharRNN(base_cfg)
    load_weights(base_model, base / "model.safetensors")
    grown = CharRNN(replace(base_cfg, vocab_size=base_cfg.vocab_size + 6))
    init_from_base(grown, base / "model.safetensors", base_cfg.vocab_size)
    for name, value in base_model.state_dict().items():  # every base row is copied exactly
        assert torch.equal(grown.state_dict()[name][: value.shape[0]], value), name
    ids = torch.from_numpy(Sampler.load(base, backend="torch").encode(texts["base"].read_text()[:2000]))[None]
    with torch.no_grad():
        losses = [
            torch.nn.functional.cross_entropy(m(ids[:, :-1])[0][0], ids[0, 1:]).item() for m in (base_model, grown)
        ]
    assert losses[0] <= losses[1] <= losses[0] + 6 * 1e-4 * 1.01


@pytest.mark.parametrize("cell", ["gru", "rnn", "mingru", "minlstm"])
def test_every_cell_grows_from_its_base_and_keeps_its_loss(texts, tmp_path, cell):
    """Each cell's base weights are copied exactly into the grown model, which scores the base's text as the
    base does at step 0; then the fine-tune trains."""
    base = tmp_path / "base"
    chargen.train(texts["base"], out=base, max_steps=10, cell=cell, **SHAPE, **TRAIN)
    base_model = Sampler.load(base, backend="torch").model
    grown = CharRNN(replace(base_model.config, vocab_size=base_model.config.vocab_size + 6))
    init_from_base(grown, base / "model.safetensors", base_model.config.vocab_size)
    for name, value in base_model.state_dict().items():
        assert torch.equal(grown.state_dict()[name][: value.shape[0]], value), name
    ids = torch.from_numpy(Sampler.load(base, backend="torch").encode(texts["base"].read_text()[:1000]))[None]
    with torch.no_grad():
        losses = [
            torch.nn.functional.cross_entropy(m.eval()(ids[:, :-1])[0][0], ids[0, 1:]).item()
            for m in (base_model, grown)
        ]
    assert losses[0] <= losses[1] <= losses[0] + 6 * 1e-4 * 1.01
    out = tmp_path / "ft"
    chargen.train(texts["new"], out=out, max_steps=5, init_from=base, **TRAIN)
    assert config(out)["model"]["cell"] == cell and config(out)["init"]["added_chars"] == 6


def test_a_fine_tune_learns_the_new_text_faster_than_from_scratch(texts, base, tmp_path):
    tuned = chargen.train(texts["new"], out=tmp_path / "tuned", max_steps=40, init_from=base, **TRAIN)
    scratch = chargen.train(texts["new"], out=tmp_path / "scratch", max_steps=40, **SHAPE, **TRAIN)
    assert tuned.best_val_loss < scratch.best_val_loss


def test_a_fine_tuned_run_resumes(texts, base, tmp_path):
    out = tmp_path / "ft"
    chargen.train(texts["new"], out=out, max_steps=20, init_from=base, **TRAIN)
    result = chargen.train(texts["new"], out=out, max_steps=30, resume=True, **TRAIN)
    assert result.steps == 30 and config(out)["init"]["from"] == str(base)


def test_fine_tune_defaults_and_given_flags(texts, base, tmp_path):
    out = tmp_path / "defaults"
    chargen.train(texts["new"], out=out, max_steps=5, init_from=base, batch_size=8, bptt=16, preview_chars=0)
    train = config(out)["train"]
    # the base's peak up to 4e-3 (this base trained at 1e-2), and the base's warmup (0: its own)
    assert config(base)["train"]["lr"] == 1e-2 and train["lr"] == 4e-3 and train["warmup_steps"] == 0
    low = tmp_path / "low-base"
    chargen.train(texts["new"], out=low, max_steps=3, **dict(SHAPE, **dict(TRAIN, lr=2e-3)))
    chargen.train(
        texts["new"], out=tmp_path / "from-low", max_steps=2, init_from=low, batch_size=8, bptt=16, preview_chars=0
    )
    assert config(tmp_path / "from-low")["train"]["lr"] == 2e-3  # below the cap: the base's own
    out = tmp_path / "given"
    chargen.train(
        texts["new"],
        out=out,
        max_steps=5,
        init_from=base,
        batch_size=8,
        bptt=16,
        preview_chars=0,
        lr=3e-3,
        warmup_steps=2,
        dropout=0.1,
    )  # dropout does not change the shape
    train, model = config(out)["train"], config(out)["model"]
    assert train["lr"] == 3e-3 and train["warmup_steps"] == 2 and model["dropout"] == 0.1


@pytest.mark.parametrize(
    "options,fragment",
    [
        (dict(hidden_size=64), "--hidden would change the model's shape"),
        (dict(cell="gru"), "--cell would change the model's shape"),
        (dict(init_checkpoint="middle"), "--init-checkpoint must be best or last"),
        (dict(normalize="nfkc"), "--normalize must be what"),
        (dict(resume=True), "--init-from starts a new run"),
    ],
)
def test_what_a_fine_tune_refuses_writes_nothing(texts, base, tmp_path, options, fragment):
    out = tmp_path / "refused"
    with pytest.raises(ChargenError, match=fragment.replace("(", r"\(")):
        chargen.train(texts["new"], out=out, max_steps=5, init_from=base, **options)
    assert not out.exists()


def test_a_base_that_is_not_a_run_is_one_line(cli, texts, tmp_path):
    for base, fragment in [(tmp_path / "nowhere", "nowhere"), (texts["base"], "base.txt")]:
        code, _, err = cli("train", texts["new"], "--out", tmp_path / "x", "--init-from", base, "--max-steps", "5")
        assert code == 2 and fragment in err.strip().splitlines()[-1] and "Traceback" not in err
        assert not (tmp_path / "x").exists()
    code, _, err = cli("train", texts["new"], "--out", tmp_path / "x", "--keep-vocab", "--max-steps", "5")
    assert code == 2 and "--keep-vocab goes with --init-from" in err


def test_info_says_where_a_run_came_from(cli, texts, base, tmp_path):
    out = tmp_path / "ft"
    chargen.train(texts["new"], out=out, max_steps=5, init_from=base, init_checkpoint="last", **TRAIN)
    code, text, _ = cli("info", out)
    line = next(line for line in text.splitlines() if "fine-tuned from" in line)
    assert (
        code == 0 and str(base) in line and "last weights, step 60" in line and "6 characters added to its 14" in line
    )
    assert math.isfinite(config(out)["init"]["best_val_loss"])


def test_what_is_recorded_and_said_of_the_base_is_right(texts, base, tmp_path, cli):
    base_best = chargen.runs.info.run_info(base)["best_step"]
    out = tmp_path / "ft"
    unseen = tmp_path / "unseen.txt"  # "Q" only near the end: in the validation split, so read as <unk>
    unseen.write_text(texts["new"].read_text() + "QQQ\n")
    code, _, err = cli(
        "train",
        unseen,
        "--out",
        out,
        "--init-from",
        base,
        "--max-steps",
        "3",
        "--batch-size",
        "8",
        "--bptt",
        "16",
        "--preview-chars",
        "0",
        "--no-progress",
    )
    init = config(out)["init"]
    assert code == 0 and init["step"] == base_best and init["from"] == str(base.resolve())
    assert "3 characters read as <unk>" in err and init["unknown_chars"] == 3
    no_last = tmp_path / "no_last"
    shutil.copytree(base, no_last)
    shutil.rmtree(no_last / "last")
    for args, fragment in [
        (
            ["--init-from", no_last, "--init-checkpoint", "last"],
            "has no complete last/ checkpoint; start from its best weights (--init-checkpoint best)",
        ),
        (["--init-from", texts["base"]], "is a file, not a run folder"),
    ]:
        code, _, err = cli("train", texts["new"], "--out", tmp_path / "x", *args, "--max-steps", "3")
        assert code == 2 and fragment in err.strip().splitlines()[-1] and not (tmp_path / "x").exists()


def test_a_presets_learning_rate_is_kept(texts, base, tmp_path):
    from chargen.config import preset

    out = tmp_path / "p"
    chargen.train(
        texts["new"], out=out, max_steps=3, init_from=base, preset="cpu", batch_size=8, bptt=16, preview_chars=0
    )
    assert config(out)["train"]["lr"] == preset("cpu")["lr"]
