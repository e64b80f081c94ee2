"""Devices: what ``--device`` resolves to, and whether this CPU has native bf16 (see precision.py)."""

from __future__ import annotations

import os

import torch

from ..errors import ChargenError


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
