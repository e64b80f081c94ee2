"""The adaptive softmax (issue 12, part 2): log-probabilities that are exact and normalized on every path
(training's loss, evaluation, Sampler.score, the fast step, sampling, batched decoding); the characters'
frequency order and the default cutoffs; training, resume and fine-tuning with it; --softmax, --cutoffs
and what they refuse."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import chargen
from chargen import ChargenError, Sampler
from chargen.config import ADAPTIVE_FROM, default_cutoffs
from chargen.data.prepared import prepare
from chargen.generate.torch_step import FastStep
from chargen.model.network import CharRNN, ModelConfig
from chargen.runs.checkpoint import init_from_base, load_weights
from chargen.serve.batcher import Batcher
from chargen.serve.process_batcher import ProcessBatcher

SHAPE = dict(num_layers=1, hidden_size=32)
TRAIN = dict(batch_size=8, bptt=16, lr=1e-2, warmup_steps=0, preview_chars=0, eval_every=10, eval_chars=0, log_every=10)
CJK = [chr(0x4E00 + i) for i in range(1200)]  # past ADAPTIVE_FROM


def zipf_text(chars: list[str], length: int, seed: int = 0) -> str:
    """Words of 1-3 characters drawn by a Zipf law, every character at least once (first), lines of words."""
    rng = random.Random(seed)
    weights = [1.0 / (r + 1) for r in range(len(chars))]
    words = [" ".join(chars[i : i + 8]) for i in range(0, len(chars), 8)]
    while sum(map(len, words)) < length:
        words.append("".join(rng.choices(chars, weights, k=rng.randint(1, 3))))
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("adaptive")
    (d / "big.txt").write_text(zipf_text(CJK, 60_000), encoding="utf-8")
    (d / "small.txt").write_text(zipf_text(CJK[:40], 20_000, seed=1), encoding="utf-8")
    return {"big": d / "big.txt", "small": d / "small.txt", "dir": d}


@pytest.fixture(scope="module")
def run(texts) -> Path:
    out = texts["dir"] / "run"
    chargen.train(texts["big"], out=out, softmax="adaptive", max_steps=30, **SHAPE, **TRAIN)
    return out


def config(run_dir: Path) -> dict:
    return json.loads((run_dir / "config.json").read_text())


def adaptive_model(cell="lstm", V=300, cutoffs=(20, 100), seed=0) -> CharRNN:
    """A random adaptive model with sharp distributions and its characters in a shuffled frequency order."""
    torch.manual_seed(seed)
    model = CharRNN(
        ModelConfig(vocab_size=V, cell=cell, num_layers=2, hidden_size=32, softmax="adaptive", cutoffs=list(cutoffs))
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    model.head.set_order(np.random.default_rng(seed).permutation(V) * 7 + 1)
    return model


# --------------------------------------------------------------------------- the output layer


@pytest.mark.parametrize("cutoffs", [(20, 100), (1,), (299,), (5, 6)])
def test_log_probs_are_normalized_and_each_is_what_the_loss_reads(cutoffs):
    model = adaptive_model(V=300, cutoffs=cutoffs)
    h = torch.randn(5, 7, 32) * 2  # (B, T, H)
    with torch.no_grad():
        lp = model.logits(h)  # (B, T, V)
        torch.testing.assert_close(lp.exp().sum(-1), torch.ones(5, 7), rtol=0, atol=1e-5)
        # the loss's path (head and one cluster per character) gives every character the same value
        rows = h.reshape(-1, 32).repeat(300, 1)  # (V * B * T, H)
        targets = torch.arange(300).repeat_interleave(35)
        each = model.target_log_probs(rows, targets).view(300, 35).t()  # (B * T, V)
        torch.testing.assert_close(each, lp.reshape(35, 300), rtol=1e-5, atol=1e-5)
        # and both are PyTorch's own adaptive softmax, read through the frequency order
        ordered = torch.nn.AdaptiveLogSoftmaxWithLoss.log_prob(model.head, h.reshape(-1, 32))
        torch.testing.assert_close(ordered[:, model.head.rank], lp.reshape(35, 300), rtol=1e-5, atol=1e-5)
        loss, _ = model(torch.randint(0, 300, (2, 9)), targets=torch.randint(0, 300, (2, 9)))
        assert loss.ndim == 0 and torch.isfinite(loss)


def test_the_frequency_order_puts_the_likeliest_characters_in_the_first_cluster():
    model = adaptive_model(V=50, cutoffs=(10, 30))
    counts = np.array([5] * 50)
    counts[[7, 3, 41]] = [100, 90, 90]  # 3 and 41 tie: the lower id comes first
    model.head.set_order(counts)
    rank = model.head.rank.tolist()
    assert rank[7] == 0 and rank[3] == 1 and rank[41] == 2
    assert sorted(rank) == list(range(50))
    rest = [i for i in range(50) if i not in (7, 3, 41)]
    assert [rank[i] for i in rest] == list(range(3, 50))  # the ties among the rest keep id order


def test_default_cutoffs_follow_the_coverage_of_the_text():
    counts = [900] * 100 + [45] * 200 + [2] * 500  # 90% in 100 characters, 99% in 300
    rng = np.random.default_rng(0)
    assert default_cutoffs(rng.permutation(counts), 320) == [100, 300]
    assert default_cutoffs(counts, 320, cover=(0.9,)) == [100]
    assert default_cutoffs(counts, 8) == [100]  # 8 // 4**2 is 0: a second cluster cannot narrow
    assert default_cutoffs([3] * 65, 320) == [64]  # at least 64 in the first, below the vocabulary
    assert default_cutoffs([3, 1], 320) == [1]


@pytest.mark.parametrize(
    "model",
    [
        dict(),
        dict(tie_weights=True),
        dict(softmax="adaptive", cutoffs=[9, 30]),
        dict(softmax="adaptive", cutoffs=[59], cell="gru", num_layers=3),
    ],
)
def test_the_stored_layout_is_the_configs(model):
    cfg = ModelConfig(vocab_size=60, hidden_size=32, **{"num_layers": 2, **model})
    net = CharRNN(cfg)
    stored = {k: tuple(v.shape) for k, v in net.state_dict().items() if not (cfg.tie_weights and k == "head.weight")}
    assert stored == cfg.parameter_shapes() and len(stored) == cfg.num_tensors
    assert cfg.num_parameters == net.num_parameters


# --------------------------------------------------------------------------- sampling and scoring


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "mingru", "minlstm"])
def test_the_fast_step_is_the_model_at_every_step(cell):
    model = adaptive_model(cell)
    step = FastStep(model)
    ids = torch.randint(0, 300, (4, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole, _ = model(ids)  # (4, 40, V)
    state = step.to_fast(model.init_state(4))
    for t in range(40):
        lp, state = step(ids[:, t], state)
        torch.testing.assert_close(lp, whole[:, t], rtol=1e-5, atol=1e-5)


def test_score_and_training_evaluation_read_the_same_probabilities(run, texts):
    s = Sampler.load(run, backend="torch")
    text = texts["big"].read_text(encoding="utf-8")[-400:]
    scored = s.score(text)
    ids = [s.vocab.start_id] + s.vocab.encode(text)
    with torch.no_grad():
        lp = s.model(torch.tensor([ids[:-1]]))[0][0]  # (N, V) log-probabilities
    torch.testing.assert_close(
        torch.from_numpy(scored.logprobs).float(),
        lp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0],
        rtol=1e-5,
        atol=1e-5,
    )
    # the best checkpoint's validation loss, as training measured it, is the sampler's score of the split
    best = json.loads((run / "last" / "trainer.json").read_text())["best_val_loss"]
    corpus = prepare(texts["big"])
    assert s.score_split(corpus, "val").nats == pytest.approx(best, rel=1e-6)


def test_sampling_follows_the_tempered_distribution(run):
    s = Sampler.load(run, backend="torch")
    n, temperature = 6000, 0.7
    firsts = s.generate("\u4e00", length=1, n=n, seed=99, temperature=temperature)
    counts = np.bincount([s.vocab.chars.index(c) for c in firsts], minlength=len(s.vocab))
    with torch.no_grad():
        lp = s.model(torch.tensor([[s.vocab.start_id, s.vocab.encode("\u4e00")[0]]]))[0][0, -1].double()
    expected = torch.softmax(lp / temperature, -1).numpy() * n
    mask = expected >= 5
    chi2 = float(((counts[mask] - expected[mask]) ** 2 / expected[mask]).sum())
    dof = int(mask.sum()) - 1
    assert dof >= 5 and chi2 < dof + 6 * math.sqrt(2 * dof), (chi2, dof)
    order = torch.argsort(lp, descending=True).tolist()
    top = s.generate("\u4e00", length=1, n=500, seed=3, top_k=4)
    assert {s.vocab.chars.index(c) for c in top} <= set(order[:4])
    greedy = s.generate("\u4e00", length=30, temperature=0)
    chain = ""
    for _ in range(30):
        ids = [s.vocab.start_id] + s.vocab.encode("\u4e00" + chain)
        with torch.no_grad():
            chain += s.vocab.chars[int(s.model(torch.tensor([ids]))[0][0, -1].argmax())]
    assert greedy == chain


def test_generate_stream_and_batches_agree(run):
    s = Sampler.load(run, backend="torch")
    many = s.generate("\u4e00\u4e01", length=60, n=3, seed=10, top_p=0.9)
    assert many == [s.generate("\u4e00\u4e01", length=60, seed=10 + i, top_p=0.9) for i in range(3)]
    assert "".join(s.stream("\u4e00", length=80, seed=4, stop=("\u4e00\u4e00",))) == s.generate(
        "\u4e00", length=80, seed=4, stop=("\u4e00\u4e00",)
    )


@pytest.mark.parametrize("kind", [Batcher, ProcessBatcher])
def test_batched_decoding_gives_each_request_its_own_text(run, kind):
    s = Sampler.load(run, backend="torch")
    rng = random.Random(2)
    reqs = [
        dict(
            prompt=rng.choice(["", "\u4e00", "\u4e8c\u4e09"]),
            length=rng.choice([1, 20, 50]),
            seed=rng.randrange(1 << 30),
            temperature=rng.choice([0.0, 0.8, 1.2]),
            top_k=rng.choice([None, 5]),
        )
        for _ in range(12)
    ]
    batcher = kind(s, max_batch=8)
    try:
        got = [batcher.submit(**r).texts(timeout=120) for r in [dict(x) for x in reqs]]
    finally:
        batcher.close()
    assert got == [[s.generate(**r)] for r in reqs]


# --------------------------------------------------------------------------- training


def test_a_run_records_its_softmax_cutoffs_and_order(run, texts, cli):
    model = config(run)["model"]
    corpus = prepare(texts["big"])
    counts = corpus.counts("train")
    assert model["softmax"] == "adaptive" and model["cutoffs"] == default_cutoffs(counts, 32)
    rank = load_file(str(run / "model.safetensors"))["head.rank"]
    assert torch.equal(rank, torch.from_numpy(np.argsort(np.argsort(-counts, kind="stable"), kind="stable")))
    code, out, _ = cli("info", run)
    assert code == 0 and f"adaptive softmax (cutoffs {','.join(map(str, model['cutoffs']))})" in out
    assert f"vocabulary {len(corpus.vocab)}," in out


def test_auto_picks_the_adaptive_softmax_for_a_large_alphabet_only(texts, tmp_path):
    chargen.train(texts["big"], out=tmp_path / "big", softmax="auto", max_steps=2, **SHAPE, **TRAIN)
    chargen.train(texts["small"], out=tmp_path / "small", softmax="auto", max_steps=2, **SHAPE, **TRAIN)
    big, small = config(tmp_path / "big")["model"], config(tmp_path / "small")["model"]
    assert big["vocab_size"] >= ADAPTIVE_FROM and big["softmax"] == "adaptive" and big["cutoffs"]
    assert small["vocab_size"] < ADAPTIVE_FROM and small["softmax"] == "full" and small["cutoffs"] is None
    # a hidden state too narrow for a second cluster: auto falls back to the full softmax
    chargen.train(
        texts["big"], out=tmp_path / "narrow", softmax="auto", max_steps=1, **dict(SHAPE, hidden_size=2), **TRAIN
    )
    assert config(tmp_path / "narrow")["model"]["softmax"] == "full"


def test_given_cutoffs_are_kept_from_flags_and_toml(texts, tmp_path, cli):
    code, _, err = cli(
        "train",
        texts["big"],
        "--out",
        tmp_path / "flags",
        "--softmax",
        "adaptive",
        "--cutoffs",
        "30, 200",
        "--max-steps",
        "2",
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
        "--no-progress",
    )
    assert code == 0, err
    assert config(tmp_path / "flags")["model"]["cutoffs"] == [30, 200]
    toml = tmp_path / "c.toml"
    toml.write_text(
        'softmax = "adaptive"\ncutoffs = [40, 300]\nmax_steps = 2\nhidden_size = 32\nnum_layers = 1\n'
        "batch_size = 8\nbptt = 16\npreview_chars = 0\n"
    )
    code, _, err = cli("train", texts["big"], "--out", tmp_path / "toml", "--config", toml, "--no-progress")
    assert code == 0, err
    assert config(tmp_path / "toml")["model"]["cutoffs"] == [40, 300]


def test_resume_is_exact_with_the_adaptive_softmax(texts, tmp_path):
    opts = dict(
        SHAPE,
        **TRAIN,
        softmax="adaptive",
        cell="gru",
        dropout=0.1,
        checkpoint_every=7,
        schedule="cosine",
        decay_steps=24,
    )
    chargen.train(texts["big"], out=tmp_path / "straight", max_steps=24, **opts)
    chargen.train(texts["big"], out=tmp_path / "split", max_steps=12, **opts)
    chargen.train(texts["big"], out=tmp_path / "split", max_steps=24, resume=True)
    for name in ("model", "optimizer", "state"):
        a = load_file(str(tmp_path / "straight" / "last" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "split" / "last" / f"{name}.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)


def test_bf16_training_with_the_adaptive_softmax(texts, tmp_path):
    result = chargen.train(
        texts["big"],
        out=tmp_path / "bf16",
        softmax="adaptive",
        precision="bf16",
        cell="gru",
        max_steps=10,
        **SHAPE,
        **TRAIN,
    )
    assert result.best_val_loss is not None and math.isfinite(result.best_val_loss)


def _losses_on(model_a: CharRNN, model_b: CharRNN, ids: torch.Tensor) -> list[float]:
    with torch.no_grad():
        return [float(-m.target_log_probs(m.features(ids[:, :-1])[0], ids[:, 1:]).mean()) for m in (model_a, model_b)]


def test_a_fine_tune_adds_characters_to_the_last_cluster(run, texts, tmp_path):
    """New characters take at most k/(n+k) of the last cluster's mass: only its characters lose any, and the
    first loss on the base's own text is at least the base's and at most log(1 + k/n) above it."""
    new = tmp_path / "new.txt"
    extra = "\u00e4\u00f6\u00fc\u00df\u00e9"
    new.write_text((extra + " ") * 50 + texts["big"].read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    out = tmp_path / "ft"
    chargen.train(new, out=out, init_from=run, max_steps=5, **TRAIN)
    base_cfg = ModelConfig.from_dict(config(run)["model"])
    cfg = ModelConfig.from_dict(config(out)["model"])
    assert cfg == replace(base_cfg, vocab_size=base_cfg.vocab_size + 5) and config(out)["init"]["added_chars"] == 5
    base = CharRNN(base_cfg).eval()
    load_weights(base, run / "model.safetensors")
    grown = CharRNN(cfg).eval()
    init_from_base(grown, run / "model.safetensors", base_cfg.vocab_size)
    for name, value in base.state_dict().items():
        assert torch.equal(grown.state_dict()[name][: value.shape[0]], value), name
    V = base_cfg.vocab_size
    assert grown.head.rank[V:].tolist() == list(range(V, V + 5))
    s = Sampler.load(run, backend="torch")
    ids = torch.from_numpy(s.encode(texts["big"].read_text(encoding="utf-8")[-3000:]))[None]
    before, after = _losses_on(base, grown, ids)
    n_last = V - base_cfg.cutoffs[-1]
    assert before <= after + 1e-6 and after <= before + math.log(1 + 5 / n_last) + 1e-6
    with torch.no_grad():  # and the grown model is still normalized
        lp = grown.logits(grown.features(ids[:, :50])[0])
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(1, 50), rtol=0, atol=1e-5)
    assert Sampler.load(out, backend="torch").generate("\u4e00", length=20, seed=1)


def test_a_fine_tune_keeps_the_bases_softmax_and_refuses_another(run, texts, tmp_path):
    with pytest.raises(ChargenError, match="--softmax would change the model's shape"):
        chargen.train(texts["big"], out=tmp_path / "a", init_from=run, softmax="full", max_steps=2)
    with pytest.raises(ChargenError, match="--cutoffs would change the model's shape"):
        chargen.train(texts["big"], out=tmp_path / "b", init_from=run, cutoffs=[5, 50], max_steps=2)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    chargen.train(texts["big"], out=tmp_path / "kept", init_from=run, keep_vocab=True, max_steps=2, **TRAIN)
    assert config(tmp_path / "kept")["model"] == config(run)["model"]


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--softmax", "adaptive", "--tie"], "--tie needs --softmax full"),
        (["--cutoffs", "10,20"], "--cutoffs sets the clusters of the adaptive softmax; pass --softmax adaptive"),
        (["--softmax", "auto", "--cutoffs", "10,20"], "pass --softmax adaptive with it"),
        (
            ["--softmax", "adaptive", "--cutoffs", "20,10"],
            "argument --cutoffs: must increase from one number to the next",
        ),
        (["--softmax", "adaptive", "--cutoffs", "0,10"], "argument --cutoffs: must start at 1 or more"),
        (
            ["--softmax", "adaptive", "--cutoffs", "ten"],
            "argument --cutoffs: must be whole numbers separated by commas",
        ),
        (["--softmax", "adaptive", "--cutoffs", "-5"], "argument --cutoffs: must be whole numbers separated by commas"),
        (["--softmax", "adaptive", "--cutoffs", "100000"], "must stay below the vocabulary's 1,2"),
        (
            ["--softmax", "adaptive", "--cutoffs", "2,4,8"],
            "makes 3 clusters after the first, each 4x narrower: too many for --hidden 32",
        ),
        (["--softmax", "adaptive", "--hidden", "2"], "the adaptive softmax needs --hidden 4 or more"),
        (["--softmax", "adaptive", "--cutoffs", "99999999999"], "argument --cutoffs: must each be at most 1,114,111"),
        (["--softmax", "adaptive", "--cutoffs", "\u0663"], "argument --cutoffs: must be whole numbers"),
        (["--softmax", "huge"], "argument --softmax: invalid choice: 'huge' (choose from 'full', 'adaptive', 'auto')"),
    ],
)
def test_bad_softmax_options_are_one_line_and_write_nothing(texts, tmp_path, cli, args, fragment):
    out = tmp_path / "refused"
    code, _, err = cli(
        "train",
        texts["big"],
        "--out",
        out,
        "--layers",
        "1",
        "--hidden",
        "32",
        "--max-steps",
        "2",
        "--no-progress",
        *args,
    )
    assert code == 2 and fragment in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_toml_cutoffs_of_the_wrong_type_are_refused(texts, tmp_path, cli):
    toml = tmp_path / "c.toml"
    toml.write_text('softmax = "adaptive"\ncutoffs = [1.5, 3]\n')
    code, _, err = cli("train", texts["big"], "--out", tmp_path / "r", "--config", toml)
    assert code == 2 and "cutoffs must be whole numbers separated by commas" in err, err
    assert not (tmp_path / "r").exists()


def test_a_damaged_order_or_softmax_section_is_one_line(run, tmp_path, cli):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    weights = load_file(str(bad / "model.safetensors"))
    weights["head.rank"] = torch.zeros_like(weights["head.rank"])
    save_file(weights, str(bad / "model.safetensors"))
    code, _, err = cli("sample", bad, "--length", "5")
    assert code == 2 and "holds a head.rank that is not an order of the characters" in err, err
    for damage, fragment in (
        (lambda w: w.pop("head.rank"), "tensors where the model has 12; missing head.rank)"),
        (lambda w: w.update({"head.rank": w["head.rank"].float()}), "holds head.rank as F32, not 64-bit integers"),
    ):
        weights = load_file(str(run / "model.safetensors"))
        damage(weights)
        save_file(weights, str(bad / "model.safetensors"))
        code, _, err = cli("sample", bad, "--length", "5")
        assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
    for section in ({"softmax": "auto"}, {"cutoffs": None}):
        shutil.rmtree(bad)
        shutil.copytree(run, bad)
        c = config(bad)
        c["model"].update(section)
        (bad / "config.json").write_text(json.dumps(c))
        code, _, err = cli("sample", bad, "--length", "5")
        assert code == 2 and "bad model section" in err and len(err.strip().splitlines()) == 1, err
