"""AdamW's groups: every parameter decays but a min cell's LayerNorm (issue 36)."""

import pytest
import torch

from chargen.config import TrainConfig
from chargen.model.network import CharRNN, ModelConfig
from chargen.training.optimizer import adamw


@pytest.mark.parametrize("cell", ["gru", "mingru", "minlstm"])
def test_a_step_with_no_gradient_decays_all_but_the_layernorm(cell):
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=7, cell=cell, num_layers=2, hidden_size=8))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    opt = adamw(model, TrainConfig(lr=0.1, weight_decay=0.5), torch.device("cpu"))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: what changes is the decay alone, p * (1 - lr * wd)
    opt.step()
    names = {name for name, _ in model.named_parameters()}
    assert any(name.startswith("rnn.norm_") for name in names) == cell.startswith("min")
    for name, p in model.named_parameters():
        want = before[name] if name.startswith("rnn.norm_") else before[name] * (1 - 0.1 * 0.5)
        torch.testing.assert_close(p.detach(), want, rtol=1e-6, atol=0, msg=name)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(names)
