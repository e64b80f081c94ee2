"""Issue 31, item 2: every file of a run folder and of the prepared cache, truncated, emptied or with one bit
flipped. Each command either says which file is damaged (one line, exit 2) or gives exactly what it gives
on the undamaged folder; never a traceback, never silently different output. The prepared cache is
rebuilt from the source instead."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from chargen import ChargenError, Sampler
from chargen.cli import main
from chargen.data.prepared import prepare
from chargen.training.trainer import train

TINY = dict(
    num_layers=1, hidden_size=32, batch_size=8, bptt=16, lr=1e-2, warmup_steps=0, preview_chars=0, eval_every=10
)
FILES = [
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "metrics.jsonl",
    "last/model.safetensors",
    "last/optimizer.safetensors",
    "last/state.safetensors",
    "last/trainer.json",
]
DAMAGE = ["truncate", "empty", "bit"]
COMMANDS = {
    "sample": ["sample", "RUN", "--length", "40", "--seed", "3"],
    "sample-torch": ["sample", "RUN", "--length", "40", "--seed", "3", "--backend", "torch"],
    "eval": ["eval", "RUN", "--split", "val"],
    "info": ["info", "RUN", "--json"],
    "export": ["export", "RUN", "-o", "OUT"],
    "resume": ["train", "--out", "RUN", "--resume", "--max-steps", "30", "--no-progress"],
}


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        del data[len(data) // 2 :]
    elif how == "empty":
        data.clear()
    else:  # one bit, three quarters in: in a weights file, inside the data, far from the header
        data[len(data) * 3 // 4] ^= 0x04
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A trained run (20 steps: last/ and the best weights) and its text."""
    d = tmp_path_factory.mktemp("corrupt")
    rng = random.Random(0)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "runs", "far", "away"]
    text = d / "text.txt"
    text.write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(2500)), encoding="utf-8")
    train(text, out=d / "run", max_steps=20, decay_steps=30, **TINY)
    return d


def run_command(name: str, run: Path, out: Path, capsys) -> tuple[int, str, str]:
    argv = [str(run) if a == "RUN" else str(out) if a == "OUT" else a for a in COMMANDS[name]]
    code = main(argv)
    got = capsys.readouterr()
    return code, got.out.replace(str(run), "RUN").replace(str(out), "OUT"), got.err


def result(name: str, run: Path, out: Path, stdout: str) -> object:
    """What a successful command produced, to compare with the undamaged run's."""
    if name == "resume":  # its summary holds timings: the checkpoint it wrote is the result
        return {k: v.tolist() for k, v in load_file(run / "last" / "model.safetensors").items()}
    if name == "export":
        return sorted(p.name for p in out.iterdir())
    if name == "info":
        return {k: v for k, v in json.loads(stdout).items() if k not in ("path",)}
    return stdout


@pytest.fixture(scope="module")
def clean(made, tmp_path_factory):
    """Each command's result on the undamaged run."""
    import contextlib
    import io

    got = {}
    for name in COMMANDS:
        d = tmp_path_factory.mktemp(f"clean-{name}")
        shutil.copytree(made / "run", d / "run")
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
            argv = [str(d / "run") if a == "RUN" else str(d / "out") if a == "OUT" else a for a in COMMANDS[name]]
            assert main(argv) == 0
        got[name] = result(name, d / "run", d / "out", stdout.getvalue().replace(str(d / "run"), "RUN"))
    return got


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("file", FILES)
def test_a_damaged_run_file_is_named_or_changes_nothing(made, clean, tmp_path, capsys, file, how, command):
    run = tmp_path / "run"
    shutil.copytree(made / "run", run)
    damage(run / file, how)
    code, out, err = run_command(command, run, tmp_path / "out", capsys)
    lines = err.strip().splitlines()
    if code == 0:
        assert result(command, run, tmp_path / "out", out) == clean[command], f"{file} {how}: silently different"
    else:
        assert code == 2 and "Traceback" not in err, err
        assert lines[-1].startswith(f"chargen {COMMANDS[command][0]}: error: ")
        assert str(run / file) in lines[-1] or (file.startswith("last/") and f"{run}/last" in lines[-1]), lines[-1]
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_undecodable_metrics_lines_are_dropped_on_resume_and_skipped_by_info(made, tmp_path, capsys):
    """Found by the corruption matrix: a metrics.jsonl line that was not UTF-8 ended `train --resume`
    in a UnicodeDecodeError traceback."""
    run = tmp_path / "run"
    shutil.copytree(made / "run", run)
    lines = (run / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    lines[1] = b'{"step": \xff\xfe 5}\n'
    (run / "metrics.jsonl").write_bytes(b"".join(lines))
    assert main(["info", str(run)]) == 0
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "30", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"{run}/metrics.jsonl: 1 damaged line(s) dropped" in err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) > len(lines) - 1 and all(isinstance(r["step"], int) for r in rows)


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("file", ["model.safetensors", "config.json", "tokenizer.json"])
def test_sampler_load_names_the_damaged_file_on_both_backends(made, tmp_path, file, how):
    run = tmp_path / "run"
    shutil.copytree(made / "run", run)
    damage(run / file, how)
    for backend in ("numpy", "torch"):
        with pytest.raises(ChargenError, match=str(run / file).replace(".", r"\.")):
            Sampler.load(run, backend=backend)


@pytest.mark.parametrize("how", DAMAGE + ["json"])
@pytest.mark.parametrize("file", ["ids.bin", "meta.json", "tokenizer.json"])
def test_a_damaged_cache_is_prepared_again(made, tmp_path, file, how):
    cache = tmp_path / "cache"
    first = prepare(made / "text.txt", cache_dir=cache)
    folder = first.dir
    ids, vocab = (folder / "ids.bin").read_bytes(), (folder / "tokenizer.json").read_bytes()
    if how == "json":
        (folder / file).write_text("[1, 2]")
    else:
        damage(folder / file, how)
    again = prepare(made / "text.txt", cache_dir=cache)
    assert not again.reused and again.dir == folder
    assert (folder / "ids.bin").read_bytes() == ids and (folder / "tokenizer.json").read_bytes() == vocab
    assert prepare(made / "text.txt", cache_dir=cache).reused


def test_json_saved_again_with_the_same_values_is_not_damage(made, tmp_path, capsys):
    """Found by the hostile pass: re-indenting config.json (same values) made the run unusable, since the
    checksum was over its bytes; it is over its values now. A changed value is still refused."""
    run = tmp_path / "run"
    shutil.copytree(made / "run", run)
    assert main(["sample", str(run), "--length", "30", "--seed", "1"]) == 0
    want = capsys.readouterr().out
    for name in ("config.json", "tokenizer.json"):
        path = run / name
        path.write_text(json.dumps(json.loads(path.read_text(encoding="utf-8")), indent=4) + "\n\n")
    assert main(["sample", str(run), "--length", "30", "--seed", "1"]) == 0
    assert capsys.readouterr().out == want
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    config["train"]["log_every"] += 1
    (run / "config.json").write_text(json.dumps(config))
    assert main(["sample", str(run), "--length", "30", "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"chargen sample: error: {run}/config.json is damaged or was edited: its values do not match the checksum "
        "model.safetensors recorded when it was written (a run's files are not edited by hand: options change "
        "through flags); restore it from a copy, or train again"
    ]
