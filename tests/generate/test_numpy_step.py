"""The NumPy step and sampling rules (issue 13, first part): the same logits as the torch fast step at every
step, for every cell and output layer; the same ids as decode.pick for the same logits and uniforms; the
same text as Sampler.generate from the same seed; and no torch import."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from chargen import Sampler
from chargen.errors import ChargenError
from chargen.generate.numpy_step import NumpyStep, pick
from chargen.generate.torch_step import FastStep
from chargen.generate.torch_step import pick as torch_pick
from chargen.model.network import CharRNN, ModelConfig
from conftest import GOLDEN_DIR, REPO

GOLDEN = GOLDEN_DIR / "run"
MODELS = [
    dict(cell="lstm"),
    dict(cell="gru"),
    dict(cell="lstm", tie_weights=True, embedding_size=24),
    dict(cell="lstm", softmax="adaptive", cutoffs=[10, 30]),
    dict(cell="gru", softmax="adaptive", cutoffs=[5]),
    dict(cell="rnn"),
    dict(cell="rnn", softmax="adaptive", cutoffs=[10, 30]),
    dict(cell="mingru"),
    dict(cell="minlstm"),
    dict(cell="mingru", embedding_size=16),  # no residual path around the first layer
    dict(cell="minlstm", softmax="adaptive", cutoffs=[10, 30], embedding_size=16),
]


def numpy_weights(model: CharRNN) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in model.state_dict().items()}


def _model(kw) -> CharRNN:
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=50, num_layers=3, hidden_size=24, **kw)).eval()
    # Weights three times larger saturate the gates (harder cases); an Elman RNN's tanh of such weights is chaotic
    # instead, where float32's rounding alone grows past the tolerance within 40 steps: it keeps its own.
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.mul_(1.0 if kw["cell"] == "rnn" else 3.0)
    if model.config.adaptive:
        model.head.set_order(np.random.default_rng(1).permutation(50))
    return model


@pytest.mark.parametrize("kw", MODELS, ids=lambda kw: "-".join(f"{v}" for v in kw.values()))
def test_the_numpy_step_is_the_fast_step_at_every_step(kw):
    """From the same state, one step gives the same logits and state to 1e-5 at every one of 60 steps; the
    two trajectories, each carrying its own state, stay within 1e-4 (float32 rounding accumulates)."""
    model = _model(kw)
    fast, step = FastStep(model), NumpyStep(numpy_weights(model), model.config)
    ids = torch.randint(0, 50, (5, 60), generator=torch.Generator().manual_seed(2))
    s_torch, s_numpy = fast.to_fast(model.init_state(5)), step.zero_state(5)
    for t in range(60):
        same = [[h.numpy() for h in layer] for layer in s_torch]
        a, s_torch = fast(ids[:, t], s_torch)
        b, s_same = step(ids[:, t].numpy(), same)
        np.testing.assert_allclose(b, a.numpy(), rtol=1e-5, atol=1e-5)
        for layer_t, layer_n in zip(s_torch, s_same):
            for x, y in zip(layer_t, layer_n):
                np.testing.assert_allclose(y, x.numpy(), rtol=1e-5, atol=1e-5)
        c, s_numpy = step(ids[:, t].numpy(), s_numpy)
        np.testing.assert_allclose(c, a.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kw", MODELS, ids=lambda kw: "-".join(f"{v}" for v in kw.values()))
def test_features_over_a_sequence_are_the_model_and_the_steps(kw):
    """``features`` (layer by layer over a sequence, as priming and scoring read) equals nn.LSTM/nn.GRU over
    the same ids, from zero and from a carried state, and ends in the state the steps end in."""
    model = _model(kw)
    step = NumpyStep(numpy_weights(model), model.config)
    ids = torch.randint(0, 50, (3, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        h_all, s_all = model.features(ids)
        _h1, _s1 = model.features(ids[:, :25])
    x1, n1 = step.features(ids[:, :25].numpy())
    x2, n2 = step.features(ids[:, 25:].numpy(), n1)
    np.testing.assert_allclose(np.concatenate([x1, x2], 1), h_all.numpy(), rtol=1e-4, atol=1e-5)
    want = [s_all[0], s_all[1]] if isinstance(s_all, tuple) else [s_all]
    for layers, whole in zip(n2, want):
        np.testing.assert_allclose(np.stack(layers), whole.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        step.log_probs(x2[:, -1]),
        torch.log_softmax(model.logits(h_all[:, -1]), -1).detach().numpy()
        if not model.config.adaptive
        else model.logits(h_all[:, -1]).detach().numpy(),
        rtol=1e-4,
        atol=1e-5,
    )
    state = step.zero_state(3)
    for t in range(40):
        _, state = step(ids[:, t].numpy(), state)
    for a_layers, b_layers in zip(state, n2):
        for a, b in zip(a_layers, b_layers):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "temperature,top_k,top_p",
    [
        (1.0, None, None),
        (0.7, None, None),
        (1.3, 5, None),
        (0.9, None, 0.8),
        (1.0, 20, 0.5),
        (0.0, None, None),
        (1e-9, None, None),
        (0.5, 1, None),
    ],
)
def test_pick_matches_torch_for_the_same_logits_and_uniforms(temperature, top_k, top_p):
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((400, 60)) * 3).astype(np.float32)
    logits[::7, 3] = logits[::7, 4]  # ties, for the stable orders
    u = rng.random(400)
    for banned in (None, 3):
        want = torch_pick(torch.from_numpy(logits), torch.from_numpy(u), temperature, top_k, top_p, banned)
        got = pick(logits, u, temperature, top_k, top_p, banned)
        assert np.array_equal(got, want.numpy())
        if banned is not None:
            assert not (got == banned).any()


@pytest.fixture(scope="module")
def both():
    return Sampler.load(GOLDEN, backend="torch"), Sampler.load(GOLDEN, backend="numpy")


def test_load_picks_the_backend(both):
    t, n = both
    assert (t.backend, n.backend) == ("torch", "numpy")
    assert Sampler.load(GOLDEN).backend == "numpy"  # auto, on the CPU
    assert Sampler.load(GOLDEN, device="cpu:0").backend == "numpy"
    with pytest.raises(ChargenError, match="belongs to the torch backend"):
        n.model  # noqa: B018 - the attribute access is what raises
    with pytest.raises(ChargenError, match="unknown backend 'jax'; use auto, torch or numpy"):
        Sampler.load(GOLDEN, backend="jax")
    with pytest.raises(ChargenError, match="the numpy backend runs on the CPU, not on cuda"):
        Sampler.load(GOLDEN, backend="numpy", device="cuda")


def test_the_same_seed_gives_the_same_text_on_both_backends(both):
    """Float rounding differs between the two (torch primes with one nn.LSTM call over the prompt and
    steps with MKL, NumPy with OpenBLAS), so a draw landing within rounding of a boundary between two
    characters could go either way. Over these 300 settings (n of 1 or 3, stops, top-k, top-p, greedy)
    none did when this was written; the test allows 2."""
    t, n = both
    rng = random.Random(0)
    differ = 0
    for _i in range(300):
        kw = dict(
            temperature=rng.choice([0.0, 0.5, 0.8, 1.0, 1.4]),
            top_k=rng.choice([None, None, 3, 10]),
            top_p=rng.choice([None, None, 0.5, 0.9]),
            n=rng.choice([1, 1, 3]),
            stop=rng.choice([(), (), ("e",), ("th", "\n\n")]),
            length=rng.choice([1, 30, 80]),
        )
        prompt, seed = rng.choice(["", "the ", "and so", "k"]), rng.randrange(1 << 40)
        differ += n.generate(prompt, seed=seed, **kw) != t.generate(prompt, seed=seed, **kw)
    assert differ <= 2, differ


def test_streams_and_scores_agree_across_backends(both, tmp_path):
    t, n = both
    for seed in range(5):
        pieces = list(n.stream("the ", length=120, seed=seed, stop="\n\n"))
        assert "".join(pieces) == t.generate("the ", length=120, seed=seed, stop="\n\n")
    text = "to be, or not to be: that is the matter.\n" * 30
    a, b = t.score(text), n.score(text)
    np.testing.assert_allclose(b.logprobs, a.logprobs, atol=1e-5)
    assert b.count == a.count == len(text) and b.nats == pytest.approx(a.nats, rel=1e-6)
    f = tmp_path / "t.txt"
    f.write_text(text * 40)  # 52,800 characters: several chunks
    a, b = t.score_file(f, chunk_chars=5000), n.score_file(f, chunk_chars=5000)
    assert b.count == a.count == 40 * len(text) and b.nats == pytest.approx(a.nats, rel=1e-6)
    with pytest.raises(ChargenError, match="score_split belongs to the torch backend"):
        n.score_split(None)


@pytest.mark.parametrize("run", ["gru", "rnn", "mingru", "minlstm", "adaptive"])
def test_other_cells_and_output_layers_agree_across_backends(run, tmp_path):
    import chargen

    text = tmp_path / "t.txt"
    text.write_text("".join(chr(0x4E00 + (i * 7919) % 500) + " abc\n"[i % 5] for i in range(6000)), encoding="utf-8")
    kw = dict(cell=run) if run != "adaptive" else dict(softmax="adaptive", cutoffs=[20, 200])
    chargen.train(
        str(text),
        out=tmp_path / "run",
        max_steps=8,
        hidden_size=32,
        num_layers=2,
        batch_size=4,
        bptt=32,
        eval_every=8,
        eval_chars=256,
        preview_chars=0,
        progress=False,
        **kw,
    )
    t = Sampler.load(tmp_path / "run", backend="torch")
    n = Sampler.load(tmp_path / "run", backend="numpy")
    prompt = t.vocab.chars[5] + t.vocab.chars[9]
    for seed in range(20):
        assert n.generate(prompt, length=60, seed=seed, n=2) == t.generate(prompt, length=60, seed=seed, n=2)
    sample = text.read_text(encoding="utf-8")[:500]
    np.testing.assert_allclose(n.score(sample).logprobs, t.score(sample).logprobs, atol=1e-5)


API_CODE = f"""
import sys
from chargen import Sampler
s = Sampler.load({str(GOLDEN)!r})
print(repr(s.generate("the ", length=60, n=2, seed=3, top_p=0.9)))
print(repr("".join(s.stream("a", length=40, seed=1, stop="e"))))
print(round(s.score("to be or not").nats, 6), s.backend, sys.modules.get("torch") is not None)
"""


def _python(code: str, block_torch: bool = False):
    if block_torch:  # as if torch were not installed: every import of it fails
        code = "import sys; sys.modules['torch'] = None\n" + code
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_the_numpy_backend_never_imports_torch_and_runs_without_it():
    free, blocked = _python(API_CODE), _python(API_CODE, block_torch=True)
    assert free.returncode == 0 and blocked.returncode == 0, free.stderr + blocked.stderr
    assert free.stdout == blocked.stdout and free.stdout.splitlines()[-1].endswith("numpy False")
    t = Sampler.load(GOLDEN, backend="torch")
    assert free.stdout.splitlines()[0] == repr(t.generate("the ", length=60, n=2, seed=3, top_p=0.9))


def _cli(*args: str, block_torch: bool = False):
    return _python(
        f"import sys; sys.argv = ['chargen', *{list(args)!r}]\nfrom chargen.cli import main\nsys.exit(main())",
        block_torch,
    )


def test_the_command_line_without_torch(tmp_path):
    """What an app gets from the sampling install: sample and eval work on NumPy (the same text as with
    torch), and what needs torch says which extra to install."""
    args = ("sample", str(GOLDEN), "--prompt", "the ", "--length", "80", "--seed", "5")
    want = _cli(*args, "--backend", "torch")
    got = _cli(*args, block_torch=True)
    assert want.returncode == got.returncode == 0 and got.stdout == want.stdout, got.stderr
    f = tmp_path / "t.txt"
    f.write_text("the cat and the hat\n" * 20)
    scored = _cli("eval", str(GOLDEN), str(f), "--json", block_torch=True)
    assert scored.returncode == 0, scored.stderr
    with_torch = _cli("eval", str(GOLDEN), str(f), "--json")
    assert abs(json.loads(scored.stdout)["nats"] - json.loads(with_torch.stdout)["nats"]) < 1e-6
    for argv, message in [
        (
            ("train", "--out", str(tmp_path / "r"), "--max-steps", "1"),
            'chargen train: error: this needs torch, which is not installed: pip install "chargen[train]"',
        ),
        (("sample", str(GOLDEN), "--backend", "torch"), "chargen sample: error: the torch backend needs PyTorch"),
    ]:
        done = _cli(*argv, block_torch=True)
        assert done.returncode == 2 and done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("dtype", ["bfloat16", "float8_e4m3fn", "complex64", "bool", "int32"])
def test_both_backends_refuse_the_same_odd_weight_dtypes(golden_run, cli, dtype):
    from safetensors.torch import load_file, save_file

    weights = load_file(str(golden_run / "model.safetensors"))
    weights["embedding.weight"] = weights["embedding.weight"].to(getattr(torch, dtype))
    save_file(weights, str(golden_run / "model.safetensors"))
    label = {"bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3", "complex64": "C64", "bool": "BOOL", "int32": "I32"}
    for backend in ("numpy", "torch"):
        code, _, err = cli("sample", str(golden_run), "--backend", backend, "--length", "5")
        assert code == 2 and err == (
            f"chargen sample: error: {golden_run}/model.safetensors holds embedding.weight "
            f"as {label[dtype]}; chargen reads weights in float16, float32 or float64: the "
            "run folder is corrupt\n"
        ), err


def test_info_and_eval_without_torch(tmp_path):
    done = _cli("info", str(GOLDEN), "--json", block_torch=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["parameters"] == Sampler.load(GOLDEN, backend="torch").model.num_parameters
    f = tmp_path / "t.txt"
    f.write_text("the cat\n")
    done = _cli("eval", str(GOLDEN), "--backend", "numpy", str(f), block_torch=True)  # FILE after an option
    assert done.returncode == 0 and "8 characters" in done.stdout, done.stderr
    done = _cli("eval", str(GOLDEN), "--split", "val", block_torch=True)
    assert done.returncode == 2 and done.stderr == (
        "chargen eval: error: --split needs PyTorch, which is not "
        'installed here: pip install "chargen[train]" (scoring a FILE '
        "works without it)\n"
    )
    done = _cli("serve", str(GOLDEN), "--port", "0", "--backend", "torch", block_torch=True)
    assert done.returncode == 2 and done.stderr == (
        'chargen serve: error: the torch backend needs PyTorch, which is not installed here: pip install "chargen[serve]", '
        "or serve with --backend numpy\n"
    ), done.stderr
