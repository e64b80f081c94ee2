"""``chargen export``: a run's model as one ONNX step, for apps in any language (issue 13).

::

    DIR/
      model.onnx       one recurrent step: ids (batch,) and the state in; logits (batch, V) and the state out
      tokenizer.json   the run's vocabulary (tokenizers.Tokenizer.from_file loads it)
      chargen.json     what a caller needs: the characters by id, the start and unknown ids, the state's
                       names and shapes, how prompts were normalized

The graph is built from the same prepared arrays as the NumPy backend (``numpy_step.NumpyStep``): the
first layer's input projection is a (V, G*H) table gathered by id, deeper LSTM layers take one matmul
over [x, h], and the output layer is the full softmax's matrix or the adaptive softmax's clusters (whose
outputs are log-probabilities; ``chargen.json`` says so). The sigmoid gates' columns come halved, as the
NumPy step keeps them, so each sigmoid is 0.5 tanh + 0.5. A min cell's deeper layers take a
LayerNormalization, then one matmul. The batch is a dynamic dimension. Only opset-17 operators that every
ONNX runtime has: Gather, MatMul, Add, Mul, Sub, Neg, Tanh, Sigmoid, Softplus, GreaterOrEqual, Where,
LayerNormalization, Split, Concat, Unsqueeze, Slice, LogSoftmax.

Nothing here imports torch: ``pip install "chargen[export]"`` (onnx) is all it needs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np

from ..config import MIN_CELLS
from ..errors import ChargenError
from ..files import write_json
from .publish import check_outside, check_target, holds_mark, publish

if TYPE_CHECKING:
    from onnx import ModelProto

    from ..runs.folder import RunFolder
    from .numpy_step import NumpyStep

EXPORT_FORMAT = 1
OPSET = 17
FILES = ("model.onnx", "tokenizer.json", "chargen.json")


def export(
    run_dir: str | os.PathLike[str], out: str | os.PathLike[str], checkpoint: str = "best", overwrite: bool = False
) -> Path:
    """Write the export of ``run_dir`` into the folder ``out`` (see the module docstring); returns it.

    ``out`` must be new, or empty, or (with ``overwrite``) hold an earlier export and nothing else. The
    files are written into a hidden folder inside ``out`` and then renamed into place, so the folder keeps
    its mode and owner, and a failure leaves it as it was (a folder made for the export is removed)."""
    try:
        import onnx
    except ImportError:
        raise ChargenError('chargen export needs its extra: pip install "chargen[export]"') from None
    from ..runs.folder import open_run_dir
    from .numpy_step import NumpyStep

    if checkpoint not in ("best", "last"):
        raise ChargenError(f"checkpoint must be best or last, got {checkpoint!r}")
    if not isinstance(run_dir, (str, os.PathLike)) or not isinstance(out, (str, os.PathLike)) or str(out) == "":
        raise ChargenError("give the run folder and an output folder as paths")
    out = Path(out)
    check_outside(out, run_dir)
    check_target(out, FILES, overwrite, is_export, "a chargen export")
    run = open_run_dir(run_dir)
    path = run.dir / "model.safetensors" if checkpoint == "best" else run.dir / "last" / "model.safetensors"
    step = NumpyStep.from_file(path, run.model_config)
    model = build_model(step)
    onnx.checker.check_model(model)
    meta = _meta(run, step, checkpoint)

    def write(stage: Path) -> None:
        onnx.save(model, str(stage / "model.onnx"))
        shutil.copyfile(run.dir / "tokenizer.json", stage / "tokenizer.json")
        write_json(stage / "chargen.json", meta)

    return publish(out, FILES, overwrite, is_export, write)


def is_export(path: Path) -> bool:
    """Whether ``path`` holds a chargen export (its ``chargen.json`` says so): only that may be overwritten."""
    return holds_mark(path, "chargen.json", "chargen_export")


def _meta(run: RunFolder, step: NumpyStep, checkpoint: str) -> dict[str, Any]:
    c = step.config
    state_shape = [c.num_layers, "batch", c.hidden_size]
    state = {"h": state_shape, "c": state_shape} if c.cell == "lstm" else {"h": state_shape}
    return {
        "chargen_export": EXPORT_FORMAT,
        **describe(run, checkpoint),
        "inputs": {
            "ids": {"dtype": "int64", "shape": ["batch"]},
            **{k: {"dtype": "float32", "shape": v} for k, v in state.items()},
        },
        "outputs": {
            "logits": {"dtype": "float32", "shape": ["batch", c.vocab_size]},
            **{f"{k}_out": {"dtype": "float32", "shape": v} for k, v in state.items()},
        },
        "state": state,
        "logits_are_log_probs": c.adaptive,
        "usage": "feed the start id first (then the prompt's ids), one id per row per call, from a zero state; "
        "each call returns the next character's logits and the state to feed back in",
    }


def describe(run: RunFolder, checkpoint: str) -> dict[str, Any]:
    """What every export says of its model: the network's shape, the vocabulary by id, the start and unknown
    ids, and how prompts must be normalized (as the corpus was)."""
    c = run.model_config
    options = run.config["corpus"].get("options") or {}
    return {
        "chargen_version": _version(),
        "checkpoint": checkpoint,
        "cell": c.cell,
        "num_layers": c.num_layers,
        "hidden_size": c.hidden_size,
        "vocab_size": c.vocab_size,
        "chars": list(run.vocab.chars),
        "start_id": run.vocab.start_id,
        "unk_id": run.vocab.unk_id,
        "normalize": options.get("normalize", "none"),  # nfc or nfkc: prompts are normalized the same way
        "lowercase": bool(options.get("lowercase", False)),
    }


def _version() -> str:
    from ..version import __version__

    return __version__


class _Graph:
    """Nodes and initializers of an ONNX graph under construction, with fresh value names."""

    def __init__(self):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.inits, self._n = [], [], 0

    def const(self, array: np.ndarray, name: str | None = None) -> str:
        name = name or self._fresh("const")
        self.inits.append(self.numpy_helper.from_array(np.array(array, order="C"), name))  # 0-d stays 0-d
        return name

    @overload
    def op(self, op_type: str, *inputs: str, outputs: Literal[1] = 1, **attrs: Any) -> str: ...

    @overload
    def op(self, op_type: str, *inputs: str, outputs: int, **attrs: Any) -> list[str]: ...

    @overload
    def op(self, op_type: str, *inputs: str, outputs: list[str], **attrs: Any) -> str | list[str]: ...

    def op(self, op_type: str, *inputs: str, outputs: int | list[str] = 1, **attrs: Any) -> str | list[str]:
        """Add a node; the name of its output, or the names of its several."""
        names = outputs if isinstance(outputs, list) else [self._fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if len(names) == 1 else names

    def _fresh(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"


def build_model(step: NumpyStep) -> ModelProto:
    """The ONNX model of one step of ``step`` (a ``numpy_step.NumpyStep``)."""
    c, L = step.config, step.L
    g = _Graph()
    state_names = ["h", "c"] if c.cell == "lstm" else ["h"]
    layer_state = {
        name: [g.op("Gather", name, g.const(np.array(k, dtype=np.int64)), axis=0) for k in range(L)]
        for name in state_names
    }  # (B, H) each
    new: dict[str, list[str]] = {name: [] for name in state_names}
    half = g.const(np.array(0.5, dtype=np.float32), "half")
    x = None
    for k, layer in enumerate(step.layers):
        h = layer_state["h"][k]
        if c.cell in MIN_CELLS:  # the layer's output adds its input back to the new state
            x, state = _min_layer(g, c.cell, k, layer, x, h, step.H)
            new["h"].append(state)
            continue
        if c.cell == "lstm":
            x, cell = _lstm_layer(g, k, layer, x, h, layer_state["c"][k], half, step.H)
            new["c"].append(cell)
        elif c.cell == "rnn":
            x = _rnn_layer(g, k, layer, x, h)
        else:
            x = _gru_layer(g, k, layer, x, h, half, step.H)
        new["h"].append(x)
    axis0 = g.const(_i64(0))
    for name in state_names:
        g.op("Concat", *[g.op("Unsqueeze", v, axis0) for v in new[name]], axis=0, outputs=[f"{name}_out"])
    assert x is not None  # the last layer's output: a model has at least one layer
    _head(g, step, x)
    return _onnx_model(g, step, state_names)


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _lstm_layer(
    g: _Graph, k: int, layer: tuple[np.ndarray, np.ndarray], x: str | None, h: str, c_prev: str, half: str, H: int
) -> tuple[str, str]:
    """Layer ``k`` of an LSTM step: its output and its new cell state."""
    t = g.op("Tanh", _table_or_products(g, k, layer, x, h))  # the i, f, o columns are halved: their sigmoids are
    sig = g.op("Add", g.op("Mul", t, half), half)  # 0.5 tanh + 0.5 (numpy_cells.lstm_cell)
    quarters = g.const(_i64(H, H, H, H))
    i, f, _, o = g.op("Split", sig, quarters, axis=1, outputs=4)
    tg = g.op("Split", t, quarters, axis=1, outputs=4)[2]
    cell = g.op("Add", g.op("Mul", f, c_prev), g.op("Mul", i, tg))
    return g.op("Mul", o, g.op("Tanh", cell)), cell


def _rnn_layer(g: _Graph, k: int, layer: tuple[np.ndarray, np.ndarray], x: str | None, h: str) -> str:
    """Layer ``k`` of an Elman RNN step: its output, which is also its new state."""
    return g.op("Tanh", _table_or_products(g, k, layer, x, h))


def _table_or_products(g: _Graph, k: int, layer: tuple[np.ndarray, np.ndarray], x: str | None, h: str) -> str:
    """An LSTM's or RNN's pre-activations: layer 0's table row plus h @ w_hh, or [x, h] @ w + b above it."""
    a, w = layer
    if k == 0:
        return g.op(
            "Add", g.op("Gather", g.const(a, "l0.table"), "ids", axis=0), g.op("MatMul", h, g.const(w, "l0.w_hh"))
        )
    assert x is not None  # the output of the layer below
    return g.op("Add", g.op("MatMul", g.op("Concat", x, h, axis=1), g.const(w, f"l{k}.w")), g.const(a, f"l{k}.b"))


def _gru_layer(
    g: _Graph,
    k: int,
    layer: tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray],
    x: str | None,
    h: str,
    half: str,
    H: int,
) -> str:
    """Layer ``k`` of a GRU step: its output, which is also its new state."""
    gi_src, w_ih, w_hh, b_hh = layer
    if k == 0:
        gi = g.op("Gather", g.const(gi_src, "l0.table"), "ids", axis=0)
    else:
        assert x is not None and w_ih is not None  # the output of the layer below, and the weights it meets
        gi = g.op("Add", g.op("MatMul", x, g.const(w_ih, f"l{k}.w_ih")), g.const(gi_src, f"l{k}.b_ih"))
    gh = g.op("Add", g.op("MatMul", h, g.const(w_hh, f"l{k}.w_hh")), g.const(b_hh, f"l{k}.b_hh"))
    split = g.const(_i64(2 * H, H))
    i_rz, i_n = g.op("Split", gi, split, axis=1, outputs=2)
    h_rz, h_n = g.op("Split", gh, split, axis=1, outputs=2)
    rz = g.op("Add", g.op("Mul", g.op("Tanh", g.op("Add", i_rz, h_rz)), half), half)  # halved: sigmoids
    r, z = g.op("Split", rz, g.const(_i64(H, H)), axis=1, outputs=2)
    n = g.op("Tanh", g.op("Add", i_n, g.op("Mul", r, h_n)))
    return g.op("Add", n, g.op("Mul", z, g.op("Sub", h, n)))  # (1 - z) * n + z * h


def _min_layer(g: _Graph, cell: str, k: int, layer: tuple[Any, ...], x: str | None, h: str, H: int) -> tuple[str, str]:
    """Layer ``k`` of a minGRU or minLSTM step: its output and its new state (numpy_cells.min_cell)."""
    if k == 0:
        table, emb = layer
        pre = g.op("Gather", g.const(table, "l0.table"), "ids", axis=0)
        res = None if emb is None else g.op("Gather", g.const(emb, "l0.embedding"), "ids", axis=0)
    else:
        assert x is not None  # the output of the layer below
        b, w, norm_w, norm_b = layer
        u = g.op("LayerNormalization", x, g.const(norm_w, f"l{k}.norm_w"), g.const(norm_b, f"l{k}.norm_b"), axis=-1)
        pre, res = g.op("Add", g.op("MatMul", u, g.const(w, f"l{k}.w")), g.const(b, f"l{k}.b")), x
    parts = g.op(
        "Split", pre, g.const(_i64(*[H] * (2 if cell == "mingru" else 3))), axis=1, outputs=2 if cell == "mingru" else 3
    )
    c = parts[-1]
    cand = g.op(
        "Where",
        g.op("GreaterOrEqual", c, g.const(np.float32(0))),
        g.op("Add", c, g.const(np.float32(0.5))),
        g.op("Sigmoid", c),
    )
    if cell == "mingru":
        z = g.op("Sigmoid", parts[0])
        a, b_ = g.op("Sub", g.const(np.float32(1)), z), g.op("Mul", z, cand)
    else:
        # f / (f + i) = sigmoid(log f - log i) with log sigmoid(x) = -softplus(-x): finite where both underflow
        d = g.op("Sub", g.op("Softplus", g.op("Neg", parts[1])), g.op("Softplus", g.op("Neg", parts[0])))
        a, b_ = g.op("Sigmoid", d), g.op("Mul", g.op("Sigmoid", g.op("Neg", d)), cand)
    state = g.op("Add", g.op("Mul", a, h), b_)
    return (state if res is None else g.op("Add", state, res)), state


def _head(g: _Graph, step: NumpyStep, x: str) -> None:
    """The output layer on the last layer's output ``x``, into ``logits``: the full softmax's logits, or
    the adaptive softmax's log-probabilities in id order."""
    c = step.config
    if not c.adaptive:
        g.op(
            "Add", g.op("MatMul", x, g.const(step.head_w, "head.w")), g.const(step.head_b, "head.b"), outputs=["logits"]
        )
        return
    head = g.op(
        "LogSoftmax",
        g.op("Add", g.op("MatMul", x, g.const(step.head_w, "head.w")), g.const(step.head_b, "head.b")),
        axis=1,
    )
    assert c.cutoffs is not None  # an adaptive config has its cutoffs
    c0, axis1 = c.cutoffs[0], g.const(_i64(1))
    parts = [g.op("Slice", head, g.const(_i64(0)), g.const(_i64(c0)), axis1)]
    for i, (project, cluster) in enumerate(step.tails):
        tail = g.op(
            "LogSoftmax",
            g.op("MatMul", g.op("MatMul", x, g.const(project, f"tail{i}.project")), g.const(cluster, f"tail{i}.out")),
            axis=1,
        )
        gate = g.op("Slice", head, g.const(_i64(c0 + i)), g.const(_i64(c0 + i + 1)), axis1)
        parts.append(g.op("Add", tail, gate))
    g.op("Gather", g.op("Concat", *parts, axis=1), g.const(step.rank, "head.rank"), axis=1, outputs=["logits"])


def _onnx_model(g: _Graph, step: NumpyStep, state_names: list[str]) -> ModelProto:
    """The finished graph as an ONNX model, with its typed inputs and outputs and chargen's properties."""
    from onnx import TensorProto, helper

    c = step.config
    state_type: list[int | str] = [step.L, "batch", step.H]
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"])]
    inputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, state_type) for name in state_names]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", c.vocab_size])]
    outputs += [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, state_type) for name in state_names]
    graph = helper.make_graph(g.nodes, "chargen_step", inputs, outputs, initializer=g.inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="chargen", producer_version=_version()
    )
    model.ir_version = 8  # what opset 17 needs; readable by onnxruntime 1.13 and later
    helper.set_model_props(model, {"chargen_export": str(EXPORT_FORMAT), "cell": c.cell})
    return model
