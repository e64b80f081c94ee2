"""``chargen export RUN --web DIR``: a static folder that samples the run in the browser (issue 35).

::

    DIR/
      index.html          the page: prompt and settings, the text streamed in as it is drawn, a stop button;
                          ?prompt=...&seed=... in its address generates at once into #output
      chargen.js          the ES module, no dependency: load("./"), model.stream(prompt, options),
                          model.generate(prompt, options)
      model.safetensors   the NumPy step's arrays (numpy_step.NumpyStep): the first layer's input table, the
                          sigmoid gates' columns pre-halved, the output layer; float32 (head.rank int32)
      model.json          the network's shape, the vocabulary by id, the start and unknown ids, how prompts
                          are normalized, the run's name and size (written last: it marks the folder)

chargen.js steps the same arrays as the NumPy backend with the same float32 cells, draws from the same
counter-based stream (``draws.py``) and picks by the same float64 rules (``numpy_step.pick``), so the same
seed and settings give the NumPy backend's text; only the matrix products (WebAssembly SIMD, or plain
JavaScript) sum in another order than BLAS. Any static file server serves the folder; nothing is fetched
from outside it. Nothing here imports torch or onnx: the core install exports.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import MIN_CELLS
from ..errors import ChargenError
from ..files import FILE_MODE
from .export import describe
from .publish import check_outside, check_target, holds_mark, publish

if TYPE_CHECKING:
    from .numpy_step import NumpyStep

__all__ = ["FILES", "WEB_FORMAT", "export_web", "web_arrays", "web_files"]

WEB_FORMAT = 1  # chargen.js's FORMAT: the layout of model.json and model.safetensors
FILES = ("chargen.js", "model.safetensors", "index.html", "model.json")  # renamed in this order: model.json last
MAX_BYTES = 1 << 31  # WebAssembly's 32-bit memory: browsers give a page at most a few GB, often 2


def export_web(
    run_dir: str | os.PathLike[str], out: str | os.PathLike[str], checkpoint: str = "best", overwrite: bool = False
) -> Path:
    """Write the browser export of ``run_dir`` into the folder ``out`` (see the module docstring); returns it.
    ``out`` must be new, or empty, or (with ``overwrite``) hold an earlier web export and nothing else."""
    if not isinstance(run_dir, (str, os.PathLike)) or not isinstance(out, (str, os.PathLike)) or str(out) == "":
        raise ChargenError("give the run folder and an output folder as paths")
    out = Path(out)
    check_outside(out, run_dir)
    check_target(out, FILES, overwrite, is_web_export, KIND)
    files = web_files(run_dir, checkpoint)

    def write(stage: Path) -> None:
        for name, data in files.items():
            (stage / name).write_bytes(data)
            os.chmod(stage / name, FILE_MODE)

    return publish(out, FILES, overwrite, is_web_export, write, KIND)


def web_files(run_dir: str | os.PathLike[str], checkpoint: str = "best") -> dict[str, bytes]:
    """The export's files by name, in :data:`FILES`' order (``chargen serve --offer-browser`` serves them)."""
    from safetensors.numpy import save

    from ..runs.folder import load_arrays, open_run_dir
    from .numpy_step import NumpyStep

    if checkpoint not in ("best", "last"):
        raise ChargenError(f"checkpoint must be best or last, got {checkpoint!r}")
    if not isinstance(run_dir, (str, os.PathLike)):
        raise ChargenError("give the run folder and an output folder as paths")
    run = open_run_dir(run_dir)
    path = run.dir / "model.safetensors" if checkpoint == "best" else run.dir / "last" / "model.safetensors"
    weights = load_arrays(path, run.model_config)
    arrays = web_arrays(NumpyStep(weights, run.model_config))
    size = sum(a.nbytes for a in arrays.values())
    if size > MAX_BYTES:
        raise ChargenError(
            f"the run's weights take {size / 1e9:.1f} GB as float32, more than a browser page holds "
            f"({MAX_BYTES / 1e9:.1f} GB); export a smaller model"
        )
    data = save(arrays, metadata={"format": "chargen-web"})
    meta = {
        "chargen_web_export": WEB_FORMAT,
        "name": Path(os.path.abspath(run.dir)).name,
        **describe(run, checkpoint),
        "cutoffs": list(run.model_config.cutoffs or []) if run.model_config.adaptive else None,
        "parameters": int(sum(v.size for k, v in weights.items() if k != "head.rank")),
        "weights_bytes": len(data),
        "weights_sha256": hashlib.sha256(data).hexdigest(),
    }
    web = resources.files("chargen.generate") / "web"
    return {
        "chargen.js": (web / "chargen.js").read_bytes(),
        "model.safetensors": data,
        "index.html": (web / "export.html").read_bytes(),
        "model.json": (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode("utf-8"),
    }


KIND = "a chargen web export"


def is_web_export(path: Path) -> bool:
    """Whether ``path`` holds a web export (its ``model.json`` says so): only that may be overwritten."""
    return holds_mark(path, "model.json", "chargen_web_export")


def web_arrays(step: NumpyStep) -> dict[str, np.ndarray]:
    """The arrays chargen.js reads, by name (the ONNX export's names): per layer ``l{k}.table`` (layer 0's
    input projection of every id, biases folded in), ``l{k}.w`` and ``l{k}.b`` (an LSTM's or RNN's weights over
    [x, h] and its bias above layer 0; ``l0.w_hh`` at layer 0) or ``l{k}.w_ih``, ``l{k}.b_ih``, ``l{k}.w_hh``,
    ``l{k}.b_hh`` (a GRU's), or a min cell's ``l0.table`` with ``l0.embedding`` where it is added back and
    ``l{k}.w``, ``l{k}.b``, ``l{k}.norm_w``, ``l{k}.norm_b`` above; ``head.w``, ``head.b``; the adaptive
    softmax's ``tail{i}.project``, ``tail{i}.out`` and ``head.rank``."""
    out: dict[str, Any] = {}
    for k, layer in enumerate(step.layers):
        if step.cell in MIN_CELLS:
            if k == 0:
                out.update({"l0.table": layer[0], **({} if layer[1] is None else {"l0.embedding": layer[1]})})
            else:
                out.update(dict(zip((f"l{k}.b", f"l{k}.w", f"l{k}.norm_w", f"l{k}.norm_b"), layer)))
        elif step.cell in ("lstm", "rnn"):
            a, w = layer
            out.update({"l0.table": a, "l0.w_hh": w} if k == 0 else {f"l{k}.b": a, f"l{k}.w": w})
        else:
            gi_src, w_ih, w_hh, b_hh = layer
            out.update({"l0.table": gi_src} if k == 0 else {f"l{k}.b_ih": gi_src, f"l{k}.w_ih": w_ih})
            out.update({f"l{k}.w_hh": w_hh, f"l{k}.b_hh": b_hh})
    out.update({"head.w": step.head_w, "head.b": step.head_b})
    if step.config.adaptive:
        for i, (project, cluster) in enumerate(step.tails):
            out.update({f"tail{i}.project": project, f"tail{i}.out": cluster})
        out["head.rank"] = np.asarray(step.rank, dtype=np.int32)
    return {k: np.ascontiguousarray(v, dtype=np.int32 if k == "head.rank" else np.float32) for k, v in out.items()}
