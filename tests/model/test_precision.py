"""The precision decision (a pure function of device type and precision), what the layers really run in,
TF32, and the test suite's own pin to the CPU."""

import os

import pytest
import torch

import chargen.model.precision as precision
from chargen.config import ModelConfig
from chargen.errors import ChargenError
from chargen.model.dtypes import layer_dtypes
from chargen.model.network import CharRNN
from chargen.model.precision import PrecisionPlan, precision_plan, resolve_precision, tf32

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "device,name,plan",
    [
        ("cpu", "fp32", PrecisionPlan(None, False, False)),
        ("cpu", "bf16", PrecisionPlan(BF16, True, False)),  # oneDNN's bf16 RNN kernels: measured, kept
        ("cuda", "fp32", PrecisionPlan(None, False, False)),
        # cuDNN's RNN under autocast is fed fp16 whatever autocast's dtype: the RNN stays float32 (TF32)
        ("cuda", "bf16", PrecisionPlan(BF16, False, False)),
        ("cuda", "fp16", PrecisionPlan(FP16, True, True)),  # fp16 everywhere autocast reaches: scaled
        ("mps", "fp32", PrecisionPlan(None, False, False)),
        ("mps", "bf16", PrecisionPlan(BF16, False, False)),
    ],
)
def test_the_plan_for_each_device_and_precision(device, name, plan):
    got = precision_plan(device, name)
    assert got == plan
    # The recurrent layers run in fp16 only with a grad scaler, and never in a dtype autocast was not asked for.
    assert got.rnn in (FP32, got.autocast)
    assert (got.rnn == FP16) <= got.grad_scaler


@pytest.mark.parametrize(
    "device,name,message",
    [
        ("cpu", "fp16", "--precision fp16 needs a CUDA device"),
        ("mps", "fp16", "--precision fp16 needs a CUDA device"),
        ("cuda", "fp8", "unknown precision 'fp8'"),
    ],
)
def test_a_plan_that_cannot_run_is_refused(device, name, message):
    with pytest.raises(ChargenError, match=message):
        precision_plan(device, name)
    if name == "fp16":
        with pytest.raises(ChargenError, match=message):
            resolve_precision(name, torch.device(device))


def model(cell, adaptive=False):
    torch.manual_seed(0)
    shape = dict(softmax="adaptive", cutoffs=[20, 100]) if adaptive else {}
    return CharRNN(ModelConfig(vocab_size=300, cell=cell, num_layers=2, hidden_size=32, **shape))


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("cell", ["lstm", "gru", "mingru", "minlstm"])
def test_layer_dtypes_on_the_cpu(cell, adaptive):
    fp32 = layer_dtypes(model(cell, adaptive), "fp32", CPU)
    assert fp32 == dict(embedding="float32", rnn="float32", head="float32", state="float32", loss="float32")
    bf16 = layer_dtypes(model(cell, adaptive), "bf16", CPU)
    # oneDNN runs an LSTM in bf16, state included; a GRU's products in bf16 with float32 out; a min cell's
    # products in bf16 and its recurrence in float32. The head's products are bf16 and the loss float32 either way.
    rnn = "bfloat16" if cell == "lstm" else "float32"
    assert bf16 == dict(embedding="float32", rnn=rnn, head="bfloat16", state=rnn, loss="float32")


def test_the_rnn_leaves_autocast_where_the_plan_says_so(monkeypatch):
    """What CUDA bf16 does, shown on the CPU: with the plan saying "not under autocast", the LSTM (bf16
    under CPU autocast) runs in float32, and gives the float32 model's outputs, while the head stays bf16."""
    net = model("lstm")
    ids = torch.randint(0, 300, (3, 7))
    want, want_state = net.features(ids)
    cpu_bf16 = PrecisionPlan(BF16, False, False)
    monkeypatch.setattr(precision, "precision_plan", lambda device, name: cpu_bf16)
    assert layer_dtypes(net, "bf16", CPU)["rnn"] == "float32"
    assert layer_dtypes(net, "bf16", CPU)["head"] == "bfloat16"
    with torch.autocast("cpu", dtype=BF16):
        got, state = net.features(ids, (torch.zeros(2, 3, 32, dtype=BF16),) * 2)  # a bf16 state is taken too
    assert got.dtype == FP32 and state[0].dtype == FP32
    assert torch.equal(got, want) and torch.equal(state[1], want_state[1])


def test_gradients_flow_through_the_rnn_outside_autocast(monkeypatch):
    net = model("gru")
    monkeypatch.setattr(precision, "precision_plan", lambda device, name: PrecisionPlan(BF16, False, False))
    h0 = torch.zeros(2, 2, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=BF16):
        loss, _ = net(torch.randint(0, 300, (2, 5)), h0, targets=torch.randint(0, 300, (2, 5)))
    loss.backward()
    assert h0.grad is not None and h0.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.rnn.parameters())


def test_tf32_is_a_no_op_off_cuda_and_restores_the_settings():
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    with tf32(CPU, True):
        assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == before
    fake_cuda = torch.device("cuda")  # the context only flips torch's flags: no CUDA device is touched
    with tf32(fake_cuda, True):
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32
    with tf32(fake_cuda, False):
        assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cudnn.allow_tf32
    assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == before


def test_no_tf32_is_a_switch_in_the_cli_and_a_key_in_toml(tmp_path):
    from chargen.cli.parser import build_parser

    args = build_parser().parse_args(["train", "x.txt", "--out", str(tmp_path / "r"), "--no-tf32"])
    assert args.tf32 is False
    args = build_parser().parse_args(["train", "x.txt", "--out", str(tmp_path / "r")])
    assert not hasattr(args, "tf32")  # not given: the config's default (True) applies


def test_tests_see_no_cuda_unless_marked_gpu():
    assert torch.cuda.is_available() is False
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    from chargen.model.devices import resolve_device

    assert resolve_device("auto") == CPU


def test_tf32_switches_both_ways_and_toml_names_the_key(tmp_path, cli):
    from chargen.cli.parser import build_parser

    parse = build_parser().parse_args
    assert parse(["train", "x.txt", "--out", "r", "--tf32"]).tf32 is True
    assert parse(["train", "x.txt", "--out", "r", "--tf32", "--no-tf32"]).tf32 is False  # the last one wins
    toml = tmp_path / "c.toml"
    toml.write_text("no-tf32 = true\n")
    code, _, err = cli("train", tmp_path / "x.txt", "--out", tmp_path / "r", "--config", toml)
    assert code == 2 and err.strip().endswith(f"config file {toml}: unknown key 'no-tf32'; write tf32 = false")
    toml.write_text("no-lr = 1\n")  # not a switch: the usual message
    code, _, err = cli("train", tmp_path / "x.txt", "--out", tmp_path / "r", "--config", toml)
    assert code == 2 and "unknown key 'no-lr'; keys are the flag names of chargen train" in err


def test_auto_precision_on_cuda_takes_bf16_only_where_the_card_computes_it(monkeypatch):
    asked = {}

    def supported(including_emulation=True):
        asked["emulation"] = including_emulation
        return including_emulation  # a card that only emulates bf16 (a V100, a T4)

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert resolve_precision("auto", torch.device("cuda")) == "fp16" and asked == {"emulation": False}
