"""The machine a GPU check runs on, and what each layer really runs in under each ``--precision``.

Usage::

    python scripts/gpu_env.py --device cuda      # on the GPU machine (scripts/gpu_check.sh runs it)
    python scripts/gpu_env.py --device cpu       # the same table for this CPU

Prints the GPU's name, torch's version and the CUDA and cuDNN it was built with, then one line per cell,
precision and device: the plan (``chargen.model.precision.precision_plan``) and the dtypes a forward pass
really produced (``layer_dtypes``), at the gpu preset's shapes. A line whose RNN ran in a dtype the plan
did not name is marked MISMATCH, and the script exits 1.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch

from chargen.config import PRESETS, ModelConfig
from chargen.errors import ChargenError
from chargen.model.devices import resolve_device
from chargen.model.dtypes import layer_dtypes
from chargen.model.network import CharRNN
from chargen.model.precision import precision_plan


def describe(device: torch.device) -> list[str]:
    lines = [f"python {platform.python_version()}, torch {torch.__version__}, {platform.machine()}"]
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        lines.append(
            f"GPU {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, "
            f"{p.multi_processor_count} multiprocessors; CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
        )
        lines.append(f"bf16 supported: {torch.cuda.is_bf16_supported()}")
    else:
        lines.append(f"no CUDA device: {device} ({torch.get_num_threads()} threads)")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    try:
        device = resolve_device(args.device)
    except ChargenError as e:
        ap.exit(2, f"{ap.prog}: error: {e}\n")
    for line in describe(device):
        print(line)
    preset = PRESETS["gpu"]
    mismatches = 0
    print(f"\nlayer dtypes at the gpu preset's shapes ({preset['num_layers']}x{preset['hidden_size']}), eval mode:")
    for cell in ("lstm", "gru"):
        torch.manual_seed(0)
        config = ModelConfig(
            vocab_size=65, cell=cell, num_layers=preset["num_layers"], hidden_size=preset["hidden_size"]
        )
        model = CharRNN(config).to(device)
        for precision in ("fp32", "bf16", "fp16"):
            try:
                plan = precision_plan(device.type, precision)
                seen = layer_dtypes(model, precision, device)
            except ChargenError as e:
                print(f"  {cell} {precision}: not run here ({e})")
                continue
            planned = str(plan.rnn).removeprefix("torch.") if plan.rnn_autocast else "float32"
            # Under autocast an RNN kernel may keep float32 outputs while computing in the lower dtype (oneDNN's
            # GRU does); what the plan rules out is a dtype it did not ask for.
            ok = seen["rnn"] in (planned, "float32")
            mismatches += not ok
            print(
                f"  {cell} {precision}: plan autocast={plan.autocast} rnn_under_autocast={plan.rnn_autocast} "
                f"grad_scaler={plan.grad_scaler}; seen {seen}{'' if ok else '  MISMATCH'}"
            )
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
