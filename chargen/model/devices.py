"""Devices and numeric precision: what ``--device`` and ``--precision`` resolve to, in one place."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from ..errors import ChargenError

if TYPE_CHECKING:
    from .network import CharRNN


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` is CUDA when present, else the CPU; ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` are
    checked against this machine. A device that is not here is a ChargenError."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ChargenError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ChargenError(
                f"--device {name} asked for, but this machine has no CUDA device (or torch was "
                "built without CUDA); use --device cpu or auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ChargenError(
                f"--device {name} asked for, but this machine has {torch.cuda.device_count()} "
                "CUDA device(s); use cuda:0 or another that exists"
            )
    elif device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ChargenError("--device mps asked for, but MPS is not available here; use --device cpu or auto")
    elif device.type != "cpu":
        raise ChargenError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX), so that bf16 products run faster
    than float32 ones rather than being emulated. ``CHARGEN_CPU_BF16=0`` (or ``1``) overrides the probe:
    the tests set it, so that ``--precision auto`` means the same on every CPU they run on."""
    forced = os.environ.get("CHARGEN_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise ChargenError(f"CHARGEN_CPU_BF16 must be 0 or 1 (or unset, to ask the CPU), got {forced!r}")
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(getattr(cpu, name, lambda: False)() for name in checks)
    except RuntimeError:
        return False


def resolve_precision(name: str, device: torch.device, cell: str | None = None) -> str:
    """``auto``: bf16 on CUDA where supported (else fp16 with a grad scaler); on the CPU, bf16 for a GRU
    where the CPU has native bf16, else fp32.

    On the CPU a GRU under bf16 autocast runs its matrix products and gates in bf16 and keeps its state
    in float32: measured on tiny shakespeare with the cpu preset, 1.4-1.8x the steps in the same time
    and a loss as good (README, "Time to quality"). An LSTM runs oneDNN's bf16 kernel end to end, state
    included, so it stays fp32 unless asked.
    """
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "cpu" and cell == "gru" and native_bf16():
            return "bf16"
        return "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ChargenError("--precision fp16 needs a CUDA device; use fp32 or bf16 here")
    return name


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The autocast context for a resolved precision: bf16/fp16 compute, or plain fp32."""
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device.type, dtype=dtype)
    return torch.autocast(device.type, enabled=False)


@torch.no_grad()
def state_dtype(model: CharRNN, precision: str, device: torch.device) -> torch.dtype:
    """The dtype of the state the model's RNN returns under ``precision`` (bf16/fp16 kernels on some
    devices, float32 on others), found with one tiny forward in eval mode, which draws no random numbers."""
    if precision == "fp32":
        return torch.float32
    was_training = model.training
    model.eval()
    try:
        with autocast(precision, device):
            _, state = model(torch.zeros(1, 1, dtype=torch.long, device=device))
    except RuntimeError as e:  # e.g. oneDNN without bf16 LSTM kernels on this CPU
        raise ChargenError(
            f"--precision {precision} does not run a {model.config.cell.upper()} on this "
            f"{device.type} ({str(e).splitlines()[0][:80]}); use --precision fp32"
        ) from None
    finally:
        model.train(was_training)
    return (state[0] if isinstance(state, tuple) else state).dtype
