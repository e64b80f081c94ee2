"""Numeric precision: what each ``--precision`` runs each layer in, on each device, decided in one place.

:func:`precision_plan` is the decision, a pure function of (device type, precision) that the tests check
on any machine. It rests on what torch really does, read in its source (``aten/src/ATen/cudnn/
AutocastRNN.cpp``, ``autocast_mode.cpp``) and checked where it can run:

- Under CUDA autocast, torch sends cuDNN's RNN kernel fp16 inputs and weights whatever autocast's dtype:
  ``_cudnn_rnn``'s autocast wrapper casts to ``kHalf`` (cuDNN RNNs have no bf16 path in torch). So under
  ``bf16`` the recurrent layers would run in fp16 with no gradient scaler, where small gradients underflow.
  chargen runs them outside autocast instead, in float32 (TF32 tensor cores where allowed, see
  :func:`tf32`), and the head's products in bf16 as asked (the embedding is a lookup: float32 always).
- ``fp16`` (CUDA only) runs everything autocast covers in fp16, the RNN included, with a gradient scaler.
- On the CPU, ``bf16`` autocast runs oneDNN's bf16 LSTM end to end (its state in bf16 too) and a GRU's
  products in bf16 with its state in float32: measured, and kept (the cpu preset's GRU gains 1.4-1.8x).
- Elsewhere (MPS) the recurrent layers stay float32: their autocast path is unmeasured.

:func:`chargen.model.dtypes.layer_dtypes` reports the dtype each layer's output really has, by running the
model once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..errors import ChargenError
from .devices import native_bf16

__all__ = ["PrecisionPlan", "autocast", "precision_plan", "resolve_precision", "rnn_under_autocast", "tf32"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@dataclass(frozen=True)
class PrecisionPlan:
    """What one (device type, precision) runs in."""

    autocast: torch.dtype | None  # the dtype autocast runs matrix products in; None: autocast off
    rnn_autocast: bool  # whether the recurrent layers run under that autocast (else float32)
    grad_scaler: bool  # whether the loss is scaled (fp16, whose range small gradients fall out of)

    @property
    def rnn(self) -> torch.dtype | None:
        """The dtype the recurrent layers take as input: autocast's when they run under it, else float32."""
        return self.autocast if self.rnn_autocast else torch.float32


def precision_plan(device_type: str, precision: str) -> PrecisionPlan:
    """The plan for a resolved ``precision`` (fp32, bf16, fp16) on a device type (cpu, cuda, mps)."""
    if precision not in _DTYPES:
        raise ChargenError(f"unknown precision {precision!r}; use fp32, bf16 or fp16")
    if precision == "fp16" and device_type != "cuda":
        raise ChargenError("--precision fp16 needs a CUDA device; use fp32 or bf16 here")
    dtype = _DTYPES[precision]
    rnn_autocast = (device_type, precision) in {("cpu", "bf16"), ("cuda", "fp16")}
    return PrecisionPlan(
        autocast=dtype, rnn_autocast=dtype is not None and rnn_autocast, grad_scaler=dtype == torch.float16
    )


def rnn_under_autocast(device_type: str) -> bool:
    """Whether the recurrent layers should run under the autocast now active on ``device_type`` (True
    when none is): :class:`CharRNN` asks, so any autocast a caller opens gets the plan's rule."""
    if not torch.is_autocast_enabled(device_type):
        return True
    dtype = torch.get_autocast_dtype(device_type)
    name = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype)
    if name is None or (name == "fp16" and device_type != "cuda"):
        return True  # not a precision of ours: autocast's own rules
    return precision_plan(device_type, name).rnn_autocast


def resolve_precision(name: str, device: torch.device, cell: str | None = None) -> str:
    """``auto``: bf16 on CUDA where the card computes it natively (compute capability 8.0 on; else fp16
    with a grad scaler, not bf16 emulated); on the CPU, bf16 for a GRU, minGRU or minLSTM where the CPU
    has native bf16, else fp32.

    On the CPU a GRU under bf16 autocast runs its matrix products and gates in bf16 and keeps its state
    in float32: measured on tiny shakespeare with the cpu preset, 1.4-1.8x the steps in the same time
    and a loss as good (docs, "Time to quality"). A min cell runs its products in bf16 and its recurrence
    in float32 (``MinRNN``): a minGRU 3x512 made 1.53x the steps in 5 minutes and a better loss (1.4767
    against 1.4980, docs/measurements/cells-2026-12-07.txt). An LSTM runs oneDNN's bf16 kernel end to
    end, state included, so it stays fp32 unless asked.
    """
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
        if device.type == "cpu" and cell in ("gru", "mingru", "minlstm") and native_bf16():
            return "bf16"
        return "fp32"
    precision_plan(device.type, name)  # refuses what this device cannot run
    return name


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The autocast context for a resolved precision: bf16/fp16 products, or plain fp32."""
    dtype = precision_plan(device.type, precision).autocast
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


@contextlib.contextmanager
def tf32(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """TF32 tensor cores for float32 products on CUDA (matmuls and cuDNN), ``enabled`` or not, inside the
    block; the process's settings are restored after it. No effect elsewhere."""
    if device.type != "cuda":
        yield
        return
    matmul, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = cudnn
