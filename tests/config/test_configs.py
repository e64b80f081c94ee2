"""Options are defined once: TOML keys, presets and Python keywords are checked against the config fields."""

from __future__ import annotations

import json
import shutil

import pytest

from chargen import ChargenError, SampleOptions
from chargen.config import OPTION_CLASSES, PRESETS, ModelConfig, PrepareOptions, TrainConfig, layer_options
from chargen.config.options import specs
from conftest import GOLDEN_DIR as GOLDEN
from conftest import REPO


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_key_is_an_option_and_builds_valid_configs(name):
    opts = layer_options(None, None, name, {})
    assert set(PRESETS[name]) == set(opts.model) | set(opts.train) | set(opts.prepare)
    ModelConfig(vocab_size=65, **opts.model)
    TrainConfig(**opts.train)


EARLIER_CPU_PRESETS = [
    # before 2026-12-03: batch 32, lr 4e-3, no weight decay, a floor of a tenth, fp32
    (
        "--batch-size 32 --bptt 100 --lr 4e-3 --weight-decay 0 --min-lr-ratio 0.1 --precision fp32",
        dict(batch_size=32, bptt=100, lr=4e-3, weight_decay=0.0, min_lr_ratio=0.1, precision="fp32"),
    ),
    # 2026-12-03: batch 64 x bptt 100, lr 6e-3, weight decay 0.2
    (
        "--batch-size 64 --bptt 100 --lr 6e-3 --weight-decay 0.2",
        dict(batch_size=64, bptt=100, lr=6e-3, weight_decay=0.2, min_lr_ratio=0.0),
    ),
]


@pytest.mark.parametrize("flags,changed", EARLIER_CPU_PRESETS)
def test_the_cpu_presets_earlier_recipes_are_reachable_by_the_flags_the_docs_give(flags, changed):
    """Issue 14: the cpu preset changed twice; each recipe before it is the preset plus the flags the presets
    guide names, parsed as the command line does."""
    from chargen.cli import build_parser
    from chargen.config.options import given

    shape = dict(
        cell="gru", num_layers=2, hidden_size=320, embedding_size=64, dropout=0.0, warmup_steps=50, eval_every=250
    )
    guide = (REPO / "docs" / "guides" / "presets-and-resume.md").read_text(encoding="utf-8")
    assert f"`--preset cpu {flags}`" in guide
    args = build_parser().parse_args(["train", "--out", "run", "--preset", "cpu", *flags.split()])
    opts = layer_options(None, None, args.preset, {k: v for cls in OPTION_CLASSES for k, v in given(args, cls).items()})
    assert {**opts.model, **opts.train} == {**shape, **changed}
    assert "precision" not in PRESETS["cpu"]  # auto: bf16 where native
    assert (PRESETS["cpu"]["batch_size"], PRESETS["cpu"]["bptt"]) == (128, 50)


@pytest.mark.parametrize(
    "line,fragment",
    [
        ('dropout = "0.1"', "dropout must be a finite number, got '0.1'"),
        ('val_fraction = "0.1"', "val_fraction must be a finite number, got '0.1'"),
        ("encoding = 5", "encoding must be text, got 5"),
        ("embedding = 2.5", "embedding must be a whole number, got 2.5"),
        ('seed = "1"', "seed must be a whole number, got '1'"),
        ('lowercase = "no"', "lowercase must be true or false, got 'no'"),
        ('cell = "transformer"', "cell must be one of lstm, gru, rnn, mingru, minlstm, got 'transformer'"),
        ("hidden = 0", "hidden must be at least 1, got 0"),
        ('max-time = "soon"', "max-time must be a duration such as 90s, 5m or 1h"),
        ("hiden = 3", "unknown key 'hiden'"),
    ],
)
def test_toml_values_are_checked_like_their_flags(tmp_path, line, fragment):
    toml = tmp_path / "c.toml"
    toml.write_text(line + "\n")
    with pytest.raises(ChargenError) as e:
        layer_options(None, toml, None, {})
    assert fragment in str(e.value)


def test_toml_layers_between_preset_and_options(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('preset = "tiny"\nhidden = 48\nmax-time = "2m"\nnormalize = "nfc"\nsource = "x.txt"\n')
    opts = layer_options(None, toml, None, {"hidden": 40, "lr": 0.01})
    assert opts.source == "x.txt"
    assert opts.model == {**{k: v for k, v in PRESETS["tiny"].items() if k in specs(ModelConfig)}, "hidden_size": 40}
    assert opts.train["max_time"] == 120.0 and opts.train["lr"] == 0.01
    assert opts.prepare == {"normalize": "nfc"}
    assert opts.explicit == {"hidden_size", "max_time", "normalize", "lr"}


def test_python_keywords_take_flag_or_field_names_and_reject_others():
    assert layer_options(None, None, None, {"layers": 3}).model == {"num_layers": 3}
    assert layer_options(None, None, None, {"num_layers": 3}).model == {"num_layers": 3}
    with pytest.raises(ChargenError, match="unknown option 'hiddn'"):
        layer_options(None, None, None, {"hiddn": 3})


def test_resumable_options_are_the_budget_evaluation_and_device():
    from chargen.config import RESUMABLE

    assert {
        "max_steps",
        "epochs",
        "max_time",
        "eval_every",
        "eval_batch_size",
        "checkpoint_every",
        "log_every",
        "patience",
        "max_bad_steps",
        "preview_chars",
        "device",
        "precision",
        "tf32",
    } == RESUMABLE


def test_each_option_class_round_trips_through_its_checks():
    for cls in (*OPTION_CLASSES, SampleOptions):
        kwargs = {"vocab_size": 10} if cls is ModelConfig else {}
        cls(**kwargs)  # the defaults are valid
        for name, spec in specs(cls).items():
            assert spec.problem(spec.default) is None, (cls.__name__, name)


def test_sample_options_object_equals_keywords():
    opts = SampleOptions(length=5, temperature=0.5, stop="\n", seed=3)
    assert opts.stop == ("\n",)
    with pytest.raises(ChargenError, match="stop strings must be non-empty"):
        SampleOptions(stop=["a", ""])
    assert PrepareOptions(val_fraction=0.2).val_fraction == 0.2


@pytest.mark.parametrize(
    "command",
    [
        ["sample", "RUN"],
        ["info", "RUN"],
        ["eval", "RUN", "corpus.txt"],
        ["train", "corpus.txt", "--out", "RUN", "--resume"],
    ],
)
def test_a_newer_run_format_is_refused_with_a_clear_message(tmp_path, cli, monkeypatch, command):
    run = tmp_path / "run"
    shutil.copytree(GOLDEN / "run", run)
    shutil.copy(GOLDEN / "corpus.txt", tmp_path / "corpus.txt")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "format_version": 2}))
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(*[a.replace("RUN", "run") for a in command])
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert "run was written by a newer chargen (run format 2; this chargen reads format 1): upgrade chargen" in err


def test_a_learning_rate_past_any_use_is_refused():
    with pytest.raises(ChargenError, match=r"--lr must be in \(0, 100\], got 1e\+38"):
        TrainConfig(lr=1e38)
    assert TrainConfig(lr=100.0).lr == 100.0
