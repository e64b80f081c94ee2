"""chargen export (issue 13): the ONNX step equals torch to 1e-5 over 300 characters, batch 1 and 8, for each
cell and output layer; chargen.json says what a caller needs; the docs' onnxruntime example runs; the
output folder is written whole or not at all; errors are one line with exit status 2."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import chargen  # noqa: E402
from chargen import Sampler  # noqa: E402
from chargen.errors import ChargenError  # noqa: E402
from chargen.generate.export import export  # noqa: E402
from conftest import GOLDEN_DIR, REPO  # noqa: E402

GOLDEN = GOLDEN_DIR / "run"
TEXT = "".join(f"{w} " for w in ("the cat sat on a mat and the dog ran far away; what a day it was! " * 80).split())
RUNS = {
    "lstm": dict(cell="lstm"),
    "gru": dict(cell="gru"),
    "tied": dict(cell="lstm", tie_weights=True, embedding_size=32),
    "adaptive": dict(cell="gru", softmax="adaptive", cutoffs=[8, 16]),
    "rnn": dict(cell="rnn"),
    "mingru": dict(cell="mingru"),
    "minlstm": dict(cell="minlstm", embedding_size=16),  # no residual path around the first layer
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("runs")
    (d / "text.txt").write_text(TEXT)
    out = {}
    for name, kw in RUNS.items():
        chargen.train(
            str(d / "text.txt"),
            out=d / name,
            max_steps=15,
            num_layers=2,
            hidden_size=32,
            batch_size=4,
            bptt=32,
            lr=1e-2,
            warmup_steps=0,
            eval_every=15,
            eval_chars=256,
            preview_chars=0,
            progress=False,
            **kw,
        )
        out[name] = d / name
    return out


def _session(export_dir: Path):
    return ort.InferenceSession(str(export_dir / "model.onnx"), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", sorted(RUNS))
@pytest.mark.parametrize("batch", [1, 8])
def test_the_onnx_step_is_torch_over_300_characters(runs, tmp_path, name, batch):
    out = export(runs[name], tmp_path / "x")
    meta = json.loads((out / "chargen.json").read_text())
    session = _session(out)
    model = Sampler.load(runs[name], backend="torch").model
    ids = np.random.default_rng(batch).integers(0, meta["vocab_size"], (batch, 300))
    with torch.no_grad():
        h, state = model.features(torch.from_numpy(ids))  # nn.LSTM/nn.GRU over all 300
        want = model.logits(h).numpy()  # (B, 300, V)
    want_state = [state[0], state[1]] if meta["cell"] == "lstm" else [state]
    feed = {
        k: np.zeros([batch if d == "batch" else d for d in shape], np.float32) for k, shape in meta["state"].items()
    }
    for t in range(300):
        logits, *new = session.run(None, {"ids": ids[:, t], **feed})
        np.testing.assert_allclose(logits, want[:, t], atol=1e-5, rtol=0)
        feed = dict(zip(meta["state"], new))
    for got, expected in zip(feed.values(), want_state):
        # an LSTM's cell state is not bounded (it reaches 21 here, where float32's spacing is 2e-6): 1e-5 plus
        # one part in a million of the value
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-5, rtol=1e-6)
    assert meta["logits_are_log_probs"] == (name == "adaptive")


def test_chargen_json_says_what_a_caller_needs(runs, tmp_path):
    out = export(runs["lstm"], tmp_path / "x", checkpoint="last")
    assert sorted(p.name for p in out.iterdir()) == ["chargen.json", "model.onnx", "tokenizer.json"]
    meta = json.loads((out / "chargen.json").read_text())
    s = Sampler.load(runs["lstm"])
    assert meta["chars"] == list(s.vocab.chars) and meta["vocab_size"] == len(s.vocab)
    assert (meta["start_id"], meta["unk_id"], meta["checkpoint"]) == (s.vocab.start_id, s.vocab.unk_id, "last")
    assert meta["state"] == {"h": [2, "batch", 32], "c": [2, "batch", 32]}
    assert (meta["normalize"], meta["lowercase"]) == ("none", False)
    session = _session(out)
    assert [i.name for i in session.get_inputs()] == ["ids", "h", "c"]
    assert [o.name for o in session.get_outputs()] == ["logits", "h_out", "c_out"]
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.decode(tok.encode("the cat").ids).replace(" ", "") == "thecat"  # the decoder joins with spaces


def test_greedy_decoding_through_onnx_is_the_samplers(runs, tmp_path):
    out = export(runs["gru"], tmp_path / "x")
    meta, session = json.loads((out / "chargen.json").read_text()), _session(out)
    feed = {k: np.zeros([2, 1, 32], np.float32) for k in meta["state"]}
    for i in [meta["start_id"]] + [meta["chars"].index(c) for c in "the "]:
        logits, *new = session.run(None, {"ids": np.array([i]), **feed})
        feed = dict(zip(meta["state"], new))
    text = ""
    for _ in range(100):
        i = int(logits[0].argmax())
        text += meta["chars"][i]
        logits, *new = session.run(None, {"ids": np.array([i]), **feed})
        feed = dict(zip(meta["state"], new))
    assert text == Sampler.load(runs["gru"]).generate("the ", length=100, temperature=0)


def test_the_docs_onnx_example_runs(runs, tmp_path):
    guide = (REPO / "docs" / "guides" / "runtime-and-onnx.md").read_text(encoding="utf-8")
    code = re.search(r"<!-- example:onnx -->\n<!-- docs: run[^\n]*-->\n```python\n(.*?)```", guide, re.S).group(1)
    out = export(runs["lstm"], tmp_path / "x")
    code = code.replace('"exports/shakespeare"', repr(str(out))).replace('"ROMEO:"', '"the "')
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    text = done.stdout[:-1]
    assert (
        text.startswith("the ")
        and len(text) == 304
        and set(text) <= set(json.loads((out / "chargen.json").read_text())["chars"])
    )


def test_export_never_imports_torch(tmp_path):
    code = (
        f"import sys; from chargen.generate.export import export; export({str(GOLDEN)!r}, {str(tmp_path / 'x')!r}); "
        "print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


def _left_behind(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_the_output_folder_rules(cli, tmp_path):
    out = tmp_path / "x"
    code, stdout, err = cli("export", str(GOLDEN), "-o", str(out))
    assert code == 0 and "exported" in stdout and (out / "model.onnx").is_file()
    before = (out / "model.onnx").read_bytes()
    code, _, err = cli("export", str(GOLDEN), "-o", str(out))
    assert (
        code == 2 and err == f"chargen export: error: {out} already holds an export; pass --overwrite to replace it\n"
    )
    code, _, err = cli("export", str(GOLDEN), "-o", str(out), "--overwrite", "--checkpoint", "last")
    assert code == 0 and json.loads((out / "chargen.json").read_text())["checkpoint"] == "last"
    assert (out / "model.onnx").read_bytes() == before  # the golden run's last weights are its best
    (tmp_path / "empty").mkdir()
    assert cli("export", str(GOLDEN), "-o", str(tmp_path / "empty"))[0] == 0
    assert cli("export", str(GOLDEN), "-o", str(tmp_path / "a" / "b" / "c"))[0] == 0  # parents are made
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    (tmp_path / "file").write_text("a file")
    for target, message in [
        (
            other,
            f"{other} exists and is not a chargen export; choose a new or empty folder (--overwrite only "
            "replaces an earlier export)",
        ),
        (tmp_path / "file", f"{tmp_path / 'file'} exists and is not a folder; choose a new folder for the export"),
    ]:
        for extra in ([], ["--overwrite"]):
            code, _, err = cli("export", str(GOLDEN), "-o", str(target), *extra)
            assert (code, err) == (2, f"chargen export: error: {message}\n")
    assert (other / "mine.txt").read_text() == "keep me" and (tmp_path / "file").read_text() == "a file"
    code, _, err = cli("export", str(tmp_path / "nope"), "-o", str(tmp_path / "y"))
    assert code == 2 and "does not exist" in err and not (tmp_path / "y").exists()
    assert _left_behind(tmp_path) == [] and _left_behind(tmp_path / "a" / "b") == []


def test_a_damaged_run_leaves_nothing(golden_run, tmp_path):
    (golden_run / "model.safetensors").write_bytes(b"\0" * 100)
    with pytest.raises(ChargenError, match="not a readable safetensors file"):
        export(golden_run, tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_without_the_extra_the_message_says_which(tmp_path):
    code = (
        "import sys; sys.modules['onnx'] = None; sys.argv = ['chargen', 'export', "
        + repr(str(GOLDEN))
        + ", '-o', "
        + repr(str(tmp_path / "x"))
        + "]\nfrom chargen.cli import main\nsys.exit(main())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 2
    assert done.stderr == 'chargen export: error: chargen export needs its extra: pip install "chargen[export]"\n'
    assert not (tmp_path / "x").exists()


def test_overwrite_replaces_only_an_export_and_keeps_the_folder(cli, tmp_path):
    out = tmp_path / "x"
    out.mkdir(mode=0o700)
    assert cli("export", str(GOLDEN), "-o", str(out))[0] == 0
    assert (out.stat().st_mode & 0o777) == 0o700  # the folder itself is kept
    (out / "myapp.py").write_text("mine")
    code, _, err = cli("export", str(GOLDEN), "-o", str(out), "--overwrite")
    assert code == 2 and err == (
        f"chargen export: error: {out} holds files that are not the export's (myapp.py); "
        "an export gets a folder of its own: choose a new or empty folder\n"
    )
    assert (out / "myapp.py").read_text() == "mine"
    (out / "myapp.py").unlink()
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "chargen.json").write_text('{"chargen_export": true}')  # not an export's mark
    assert cli("export", str(GOLDEN), "-o", str(tmp_path / "fake"), "--overwrite")[0] == 2
    runs_home = tmp_path / "exports"  # a run kept inside an export's folder is never touched
    assert cli("export", str(GOLDEN), "-o", str(runs_home))[0] == 0
    shutil.copytree(GOLDEN, runs_home / "myrun")
    code, _, err = cli("export", str(runs_home / "myrun"), "-o", str(runs_home), "--overwrite")
    assert code == 2 and "holds files that are not the export's (myrun)" in err
    assert (runs_home / "myrun" / "model.safetensors").is_file()


def test_the_current_folder_and_long_names(cli, tmp_path, monkeypatch):
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    assert cli("export", str(GOLDEN), "-o", ".")[0] == 0
    assert cli("export", str(GOLDEN), "-o", ".", "--overwrite")[0] == 0
    assert sorted(p.name for p in Path(".").iterdir()) == ["chargen.json", "model.onnx", "tokenizer.json"]
    code, _, err = cli("export", str(GOLDEN), "-o", "y" * 300)
    assert code == 2 and err.startswith("chargen export: error: cannot ") and "File name too long" in err
    assert cli("export", str(GOLDEN), "-o", "z" * 250)[0] == 0  # long, but a valid name


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    import chargen.generate.export as ex

    def fail(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ex, "write_json", fail)
    with pytest.raises(ChargenError, match=r"cannot write the export into .* \(No space left on device\)"):
        export(GOLDEN, tmp_path / "a" / "b" / "x")
    assert list(tmp_path.iterdir()) == []  # the folders it made are gone
    (tmp_path / "old").mkdir()
    monkeypatch.undo()
    export(GOLDEN, tmp_path / "old")
    before = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()}
    monkeypatch.setattr(ex, "write_json", fail)
    with pytest.raises(ChargenError):
        export(GOLDEN, tmp_path / "old", checkpoint="last", overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()} == before
