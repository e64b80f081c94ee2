"""What a model really runs in: one tiny forward under a precision, each layer's output dtype recorded.

The decision of what should run in which dtype is precision.py's; this module checks it on a model, and
gives the trainer the dtype of the state the RNN returns (which it feeds back in).
"""

from __future__ import annotations

import torch

from ..config import CELL_NAMES
from ..errors import ChargenError
from .network import AdaptiveHead, CharRNN
from .precision import autocast

__all__ = ["layer_dtypes", "state_dtype"]


@torch.no_grad()
def state_dtype(model: CharRNN, precision: str, device: torch.device) -> torch.dtype:
    """The dtype of the state the model's RNN returns under ``precision`` (bf16/fp16 kernels on some
    devices, float32 on others), found with one tiny forward in eval mode, which draws no random numbers."""
    return _probe(model, precision, device)["state"]


@torch.no_grad()
def layer_dtypes(model: CharRNN, precision: str, device: torch.device) -> dict[str, str]:
    """What each layer's output really is under ``precision`` (one tiny forward, eval mode): the
    embedding, the recurrent layers' output and state, the head's products and the loss's log-softmax."""
    return {k: str(v).removeprefix("torch.") for k, v in _probe(model, precision, device).items()}


def _probe(model: CharRNN, precision: str, device: torch.device) -> dict[str, torch.dtype]:
    seen: dict[str, torch.dtype] = {}
    head = model.head
    products: torch.nn.Module = head.head if isinstance(head, AdaptiveHead) else head  # the adaptive head's first layer

    def hook(name: str):  # type: ignore[no-untyped-def]  # a forward hook's loose signature
        def record(module: torch.nn.Module, args: object, out: object) -> None:
            seen.setdefault(name, (out[0] if isinstance(out, tuple) else out).dtype)  # type: ignore[union-attr]

        return record

    hooks = [
        m.register_forward_hook(hook(n))
        for n, m in (("embedding", model.embedding), ("rnn", model.rnn), ("head", products))
    ]
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 2, dtype=torch.long, device=device)
    try:
        with autocast(precision, device):
            _, state = model(x)
            loss, _ = model(x, targets=x)
    except RuntimeError as e:  # e.g. oneDNN without bf16 LSTM kernels on this CPU
        raise ChargenError(
            f"--precision {precision} does not run a {CELL_NAMES[model.config.cell]} on this "
            f"{device.type} ({str(e).splitlines()[0][:80]}); use --precision fp32"
        ) from None
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return {**seen, "state": (state[0] if isinstance(state, tuple) else state).dtype, "loss": loss.dtype}
