"""Which backend a sampler runs on: torch or NumPy, chosen without importing torch (that takes seconds)."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from ..errors import ChargenError

if TYPE_CHECKING:
    import torch

BACKENDS = ("auto", "torch", "numpy")


def torch_installed() -> bool:
    """Whether PyTorch can be imported here (found without importing it: that takes seconds)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except ValueError:  # sys.modules["torch"] is None: imports of torch are blocked
        return False


def resolve_backend(backend: str, device: str | torch.device = "cpu") -> str:
    """``torch`` or ``numpy`` for a ``backend`` asked for on ``device``. ``auto`` is NumPy on the CPU
    (faster for one stream, and no torch import) and torch on an accelerator; without torch installed,
    NumPy everywhere it can run."""
    if backend not in BACKENDS:
        raise ChargenError(f"unknown backend {backend!r}; use auto, torch or numpy")
    name = device if isinstance(device, str) else str(device)
    on_cpu = name == "cpu" or name.startswith("cpu:") or (name == "auto" and not _cuda_available())
    if backend == "numpy" and not on_cpu:
        raise ChargenError(
            f"the numpy backend runs on the CPU, not on {name}; choose the cpu device, or the torch backend"
        )
    if backend == "auto":
        backend = "numpy" if on_cpu else "torch"
    if backend == "torch" and not torch_installed():
        raise ChargenError(
            "the torch backend needs PyTorch, which is not installed here: "
            'pip install "chargen[train]" (or torch), or use the numpy backend'
        )
    return backend


def _cuda_available() -> bool:
    if not torch_installed():
        return False
    import torch

    return torch.cuda.is_available()
