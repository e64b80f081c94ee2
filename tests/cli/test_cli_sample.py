"""chargen sample / eval through the command line, with a run trained for a few steps."""

import json
import shutil

import pytest

from chargen import Sampler
from chargen.training.trainer import train
from conftest import one_error_line


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("sample")
    corpus = d / "c.txt"
    corpus.write_text("to be or not to be, that is the question.\n" * 200)
    out = d / "run"
    train(
        corpus,
        out=out,
        num_layers=1,
        hidden_size=32,
        batch_size=8,
        bptt=16,
        max_steps=60,
        eval_every=30,
        preview_chars=0,
        lr=1e-2,
        warmup_steps=0,
        cache_dir=d / "cache",
    )
    return out


def test_sample_prints_prompt_and_continuation_deterministically(cli, run):
    code, out, err = cli("sample", run, "--prompt", "to be", "--length", "120", "--seed", "4")
    assert code == 0, err
    assert out.startswith("to be") and len(out) == len("to be") + 120 + 1
    assert cli("sample", run, "--prompt", "to be", "--length", "120", "--seed", "4")[1] == out
    api = Sampler.load(run).generate("to be", length=120, seed=4, temperature=0.8)
    assert out == "to be" + api + "\n"


def test_sample_n_with_delimiters_and_stop_escapes(cli, run):
    code, out, _ = cli("sample", run, "-n", "3", "--length", "200", "--seed", "1", "--stop", r"\n")
    assert code == 0
    parts = out.split("----- sample ")
    assert len(parts) == 4 and parts[1].startswith("1 of 3 -----\n")
    for part in parts[1:]:
        body = part.split("-----\n", 1)[1]
        assert body.rstrip("\n").count("\n") == 0  # stopped at the first newline


def test_sample_checkpoint_last_and_greedy(cli, run):
    code, out, _ = cli("sample", run, "--checkpoint", "last", "--temperature", "0", "--length", "30")
    assert code == 0 and len(out) == 31


def test_rules_and_searches_on_the_command_line_are_the_samplers(cli, run):
    rules = ["--logit-bias", "e=-100", "--logit-bias", r"\n=2.5", "--presence-penalty", "0.5", "--min-p", "0.05"]
    code, out, err = cli("sample", run, "--prompt", "to be", "--length", "150", "--seed", "3", *rules)
    assert code == 0, err
    api = Sampler.load(run).generate(
        "to be", length=150, seed=3, logit_bias={"e": -100, "\n": 2.5}, presence_penalty=0.5, min_p=0.05
    )
    assert out == "to be" + api + "\n" and "e" not in api
    code, out, err = cli("sample", run, "--prompt", "to", "--length", "40", "--beam", "3", "-n", "2")
    assert code == 0, err
    texts = Sampler.load(run).generate("to", length=40, beam=3, n=2)
    assert out == f"----- sample 1 of 2 -----\nto{texts[0]}\n\n----- sample 2 of 2 -----\nto{texts[1]}\n"
    assert err.count("beam of 3: sample ") == 2 and "nats over 40 characters" in err
    code, out, err = cli("sample", run, "--length", "40", "--best-of", "4", "--seed", "8")
    assert code == 0 and out == Sampler.load(run).generate("", length=40, best_of=4, seed=8) + "\n"
    assert err.startswith("best 1 of 4: log-probability -")


def test_a_bias_that_bans_every_character_is_one_line(cli, run):
    chars = sorted(set("to be or not to be, that is the question.\n"))
    args = [a for c in chars for a in ("--logit-bias", ("\\n" if c == "\n" else c) + "=-100")]
    code, out, err = cli("sample", run, "--length", "5", *args)
    assert code == 2 and out == ""
    one_error_line(err, "logit_bias bans every character of the vocabulary; leave at least one")


def test_eval_matches_score(cli, run, tmp_path):
    text = "to be or not to be.\n" * 20
    f = tmp_path / "t.txt"
    f.write_text(text)
    code, out, err = cli("eval", run, f, "--json")
    assert code == 0, err
    result = json.loads(out)
    score = Sampler.load(run).score(text)
    assert result["chars"] == len(text)
    assert result["nats"] == pytest.approx(score.nats, rel=1e-5)
    assert result["bpc"] == pytest.approx(score.bpc, rel=1e-5)


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--temperature", "-1"], ["argument --temperature: must be at least 0, got -1.0"]),
        (["--temperature", "nan"], ["argument --temperature: must be a finite number"]),
        (["--top-k", "0"], ["argument --top-k: must be at least 1, got 0"]),
        (["--top-p", "1.5"], ["argument --top-p: must be in (0, 1], got 1.5"]),
        (["--length", "-1"], ["argument --length: must be at least 0, got -1"]),
        (["-n", "0"], ["argument -n: must be in [1, 65536], got 0"]),
        (["--seed", "-1"], ["argument --seed: must be in [0, 2**63 - 1], got -1"]),
        (["--device", "foo"], ["unknown device 'foo'"]),
        (["--device", "cuda:x"], ["unknown device 'cuda:x'"]),  # issue 8, item 8
        (
            ["--device", "mps"] if not __import__("torch").backends.mps.is_available() else ["--device", "foo"],
            ["mps" if not __import__("torch").backends.mps.is_available() else "foo"],
        ),
        (["--temperature", "1e-310", "--length", "3", "--top-p", "2"], ["argument --top-p: must be in (0, 1]"]),
        (["--prompt", "QXZ€"], ["not in the vocabulary", "'€'"]),
        (["--prompt-file", "/no/such/prompt.txt"], ["cannot read prompt file /no/such/prompt.txt"]),
        (["--prompt", "a", "--prompt-file", "x"], ["pass --prompt or --prompt-file, not both"]),
        (["--device", "cuda"], ["cuda"]),  # the tests see no CUDA device (conftest), on any machine
        (["--logit-bias", "e"], ["argument --logit-bias: must be CHAR=BIAS with one character, such as e=-5"]),
        (["--logit-bias", "ab=1"], ["argument --logit-bias: must be CHAR=BIAS with one character"]),
        (["--logit-bias", "e=x"], ["argument --logit-bias: must be CHAR=BIAS with a number for BIAS, got 'e=x'"]),
        (["--logit-bias", "e=-101"], ["argument --logit-bias: must give each character a number in [-100, 100]"]),
        (["--logit-bias", "e=inf"], ["argument --logit-bias: must give 'e' a finite number"]),
        (["--logit-bias", "€=1"], ["logit_bias names '€', which is not in the model's vocabulary"]),
        (["--min-p", "2"], ["argument --min-p: must be in [0, 1], got 2.0"]),
        (["--presence-penalty", "3"], ["argument --presence-penalty: must be in [-2, 2], got 3.0"]),
        (["--repetition-penalty", "0"], ["argument --repetition-penalty: must be in [0.01, 100], got 0.0"]),
        (["--repetition-penalty", "5e-324"], ["argument --repetition-penalty: must be in [0.01, 100]"]),
        (["--logit-bias", "e=1", "--logit-bias", "e=-100"], ["logit_bias names 'e' twice"]),
        (["--repeat-last-n", "-2"], ["argument --repeat-last-n: must be at least -1, got -2"]),
        (["--beam", "2", "-n", "3"], ["n (3) must be at most beam (2)"]),
        (["--best-of", "2", "-n", "3"], ["best_of (2) must be at least n (3)"]),
        (["--beam", "2", "--best-of", "3"], ["best_of draws samples and beam searches without drawing"]),
        (["--beam", "2", "--max-copy", "5"], ["--max-copy draws a sample again, and a beam search draws nothing"]),
    ],
)
def test_bad_sample_input(cli, run, args, fragments):
    code, out, err = cli("sample", run, *args)
    assert code == 2 and out == ""
    one_error_line(err, *fragments)


@pytest.mark.parametrize(
    "damage,fragments",
    [
        ("missing", ["does not exist"]),
        ("no_weights", ["missing model.safetensors"]),
        ("bad_config", ["config.json is not readable JSON"]),
        ("truncated", ["model.safetensors is not a readable safetensors file"]),
        ("bad_tokenizer", ["tokenizer.json is not a readable tokenizer"]),
    ],
)
def test_sample_from_a_damaged_run(cli, run, tmp_path, damage, fragments):
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    if damage == "missing":
        shutil.rmtree(broken)
    elif damage == "no_weights":
        (broken / "model.safetensors").unlink()
    elif damage == "bad_config":
        (broken / "config.json").write_text("[")
    elif damage == "truncated":
        data = (broken / "model.safetensors").read_bytes()
        (broken / "model.safetensors").write_bytes(data[:100])
    elif damage == "bad_tokenizer":
        (broken / "tokenizer.json").write_text("{}")
    code, out, err = cli("sample", broken, "--length", "5")
    assert code == 2 and out == ""
    one_error_line(err, *fragments)
    code, _, err = cli("eval", broken, broken.parent / "x.txt")
    assert code == 2


@pytest.mark.gpu
def test_a_run_trained_on_cuda_samples_on_cpu_and_cuda(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("to be or not to be, that is the question.\n" * 200)
    out = tmp_path / "run"
    train(
        corpus,
        out=out,
        num_layers=2,
        hidden_size=32,
        batch_size=8,
        bptt=16,
        max_steps=40,
        device="cuda",
        preview_chars=0,
        lr=1e-2,
        warmup_steps=0,
    )
    cpu = Sampler.load(out, device="cpu")
    gpu = Sampler.load(out, device="cuda")
    assert len(cpu.generate("to", length=50, seed=1)) == 50
    assert gpu.generate("to", length=200, seed=3) == gpu.generate("to", length=200, seed=3)
    assert gpu.generate("to", length=100, temperature=0) == cpu.generate("to", length=100, temperature=0)
    batch = gpu.generate("to", length=40, n=8, seed=5)
    assert batch[3] == gpu.generate("to", length=40, seed=8)
