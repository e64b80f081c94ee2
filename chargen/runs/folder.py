"""The run folder: its layout, reading and validating it, and the lock held while training into it.

::

    RUN/
      config.json          model config, train config, corpus summary, versions, format version
      tokenizer.json       the vocabulary (tokenizers.Tokenizer.from_file loads it)
      model.safetensors    best weights so far by validation loss, CPU tensors
      last/                what --resume needs (see checkpoint.py)
      metrics.jsonl        one JSON object per log line
      .chargen.lock        present while a process trains into the folder

:func:`open_run_dir` is the one validation of a run folder, used by
``Sampler.load``, ``--resume`` and ``chargen info``: the files are there, the
config is of a format this chargen reads, the model section is a valid
``ModelConfig``, and the vocabulary matches it.

:class:`RunLock` is an OS file lock (``flock``) on ``RUN/.chargen.lock``: it dies with
the process that holds it, so a run killed with ``kill -9`` never locks the
next one out.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..config import ModelConfig, PrepareOptions, TrainConfig
from ..errors import ChargenError
from ..files import FILE_MODE
from .sealed import check_companions, check_sealed

if TYPE_CHECKING:
    from ..data.vocab import CharVocab

_T = TypeVar("_T")

FORMAT_VERSION = 1
RUN_FILES = ("config.json", "tokenizer.json", "model.safetensors")
LAST_FILES = ("model.safetensors", "optimizer.safetensors", "state.safetensors", "trainer.json")
LOCK_FILE = ".chargen.lock"


def read_json(path: Path) -> dict:
    """A JSON object from a run folder; a missing or damaged file is a ChargenError."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ChargenError(f"{path} is missing; the run folder is incomplete") from None
    except (OSError, ValueError) as e:
        raise ChargenError(f"{path} is not readable JSON ({e}); the run folder is corrupt") from None
    if not isinstance(data, dict):
        raise ChargenError(f"{path} does not hold a JSON object; the run folder is corrupt")
    return data


def check_run_dir(run_dir: Path) -> Path:
    """The run folder, if it holds the documented files; else a ChargenError saying what is missing."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ChargenError(f"{run_dir} is a file, not a run folder; give the folder chargen train --out wrote")
    if not run_dir.is_dir():
        raise ChargenError(f"run folder {run_dir} does not exist; train one with chargen train --out {run_dir}")
    missing = [f for f in RUN_FILES if not (run_dir / f).is_file()]
    if missing:
        raise ChargenError(
            f"{run_dir} is not a complete run folder (missing {', '.join(missing)}); "
            "train it again or point at another run"
        )
    return run_dir


def read_config(run_dir: Path) -> dict:
    """``config.json``, checked for a format this chargen reads and for its sections."""
    config = read_json(Path(run_dir) / "config.json")
    version = config.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise ChargenError(
            f"{run_dir} was written by a newer chargen (run format {version}; this chargen "
            f"reads format {FORMAT_VERSION}): upgrade chargen (pip install -U chargen)"
        )
    if version != FORMAT_VERSION or not isinstance(version, int) or isinstance(version, bool):
        raise ChargenError(
            f"{run_dir}/config.json has format version {version!r}; this chargen reads "
            f"version {FORMAT_VERSION}: the run folder is corrupt, retrain it"
        )
    for key in ("model", "train", "corpus"):
        if not isinstance(config.get(key), dict):
            raise ChargenError(f"{run_dir}/config.json has no {key!r} section; the run folder is corrupt")
    return config


def looks_like_run(path: Path) -> bool:
    """Whether ``path`` bears a chargen run's own marks: a config.json with a format version and model,
    train and corpus sections, beside a tokenizer.json. Only such a folder may be overwritten."""
    try:
        with open(Path(path) / "config.json", encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return False
    return (
        isinstance(config, dict)
        and isinstance(config.get("format_version"), int)
        and not isinstance(config.get("format_version"), bool)
        and all(isinstance(config.get(k), dict) for k in ("model", "train", "corpus"))
        and (Path(path) / "tokenizer.json").is_file()
    )


def metrics_row(line: str) -> dict | None:
    """A line of metrics.jsonl as a row, or None where it is damaged."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    ok = isinstance(row, dict) and isinstance(row.get("step"), int) and not isinstance(row.get("step"), bool)
    return row if ok else None


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict]:
    """The rows of a run's metrics.jsonl (none if it has none); a line cut short by a crash, or damaged on
    disk (not UTF-8, not JSON, no whole step), is skipped: the log is a record, nothing depends on it."""
    rows = []
    try:
        with open(Path(run_dir) / "metrics.jsonl", encoding="utf-8", errors="replace") as f:
            for line in f:
                row = metrics_row(line)
                if row is not None:
                    rows.append(row)
    except FileNotFoundError:
        pass
    return rows


def last_dir(run_dir: Path) -> Path:
    """``last/``, or ``last.old/`` if a crash hit between the two renames of a swap."""
    run_dir = Path(run_dir)
    for name in ("last", "last.old"):
        d = run_dir / name
        if all((d / f).is_file() for f in LAST_FILES):
            return d
    raise ChargenError(
        f"{run_dir} has no complete last/ checkpoint to resume from; "
        "start a new run (pass --overwrite to replace this one)"
    )


@dataclass
class RunFolder:
    """A validated run folder: its config (raw and as dataclasses) and its vocabulary."""

    dir: Path
    config: dict
    model_config: ModelConfig
    train_config: TrainConfig
    prepare: dict  # the corpus options the run was created with (only those given)
    vocab: CharVocab  # imported when a folder is opened: tokenizers is imported lazily


def open_run_dir(run_dir: str | os.PathLike) -> RunFolder:
    """Read and check a run folder (see the module docstring); any problem is a ChargenError."""
    from ..data.vocab import CharVocab

    run_dir = check_run_dir(Path(run_dir))
    config = read_config(run_dir)
    corpus = config["corpus"]
    prepare = corpus.get("prepare", {})
    schedule = config.get("schedule", {})
    model_config = _section(run_dir, "model", lambda: _model_config(config["model"]))
    train_config = _section(run_dir, "train", lambda: TrainConfig(**_complete(TrainConfig, config["train"])))
    _section(run_dir, "corpus", lambda: PrepareOptions(**prepare))
    if not (isinstance(corpus.get("fingerprint"), str) and _whole(corpus.get("chars"))):
        raise ChargenError(
            f"{run_dir}/config.json has a bad corpus section (fingerprint, chars); the run folder is corrupt"
        )
    if not (isinstance(schedule, dict) and all(v is None or _number(v) for v in schedule.values())):
        raise ChargenError(f"{run_dir}/config.json has a bad schedule section; the run folder is corrupt")
    check_weights_header(run_dir / "model.safetensors", model_config)
    vocab = CharVocab.load(run_dir / "tokenizer.json")
    if len(vocab) != model_config.vocab_size:
        raise ChargenError(
            f"{run_dir}/tokenizer.json has {len(vocab)} characters but the model expects "
            f"{model_config.vocab_size}; the run folder is corrupt"
        )
    # Damage that still reads as a valid run (a digit, a character of the vocabulary): the checksums the
    # best weights recorded of both files. Last, so that a file that does not read gets its own message.
    check_companions(run_dir / "model.safetensors", run_dir)
    return RunFolder(run_dir, config, model_config, train_config, prepare, vocab)


WEIGHT_DTYPES = ("F16", "F32", "F64")  # what a weights file may hold (runs write F32, and head.rank as I64)


def check_weights_header(path: Path, model_config: ModelConfig) -> None:
    """Compare the tensor names and shapes in a weights file's header with the config, before
    anything is allocated: a config.json edited to ask for a huge model fails here, cheaply."""
    from safetensors import SafetensorError, safe_open

    check_sealed(path)  # the data's checksum, where the file carries one
    try:
        with safe_open(str(path), framework="numpy") as f:
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ChargenError(
            f"{path} is not a readable safetensors file ({str(e).splitlines()[0]}); the run folder is corrupt"
        ) from None
    expected_count = model_config.num_tensors
    if len(stored) != expected_count:
        detail = f"{len(stored)} tensors where the model has {expected_count}"
        if expected_count <= 4096:  # a config edited to ask for millions of layers is not listed
            expected = model_config.parameter_shapes()
            missing, extra = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
            detail += "".join(
                f"; {what} {names[0]}" + (f" and {len(names) - 1} more" if len(names) > 1 else "")
                for what, names in (("missing", missing), ("unexpected", extra))
                if names
            )
        raise ChargenError(f"{path} does not fit the model in config.json ({detail}); the run folder is corrupt")
    expected = model_config.parameter_shapes()
    wrong = sorted(set(stored) ^ set(expected)) or sorted(k for k in stored if stored[k] != expected[k])
    if wrong:
        raise ChargenError(
            f"{path} does not fit the model in config.json (first mismatch: {wrong[0]}); the run folder is corrupt"
        )
    if "head.rank" in stored and dtypes["head.rank"] != "I64":
        raise ChargenError(
            f"{path} holds head.rank as {dtypes['head.rank']}, not 64-bit integers; the run folder is corrupt"
        )
    odd = sorted(k for k in stored if k != "head.rank" and dtypes[k] not in WEIGHT_DTYPES)
    if odd:  # both backends read the same files: NumPy has no bfloat16 or float8, and no weight is complex
        raise ChargenError(
            f"{path} holds {odd[0]} as {dtypes[odd[0]]}; chargen reads weights in float16, "
            "float32 or float64: the run folder is corrupt"
        )


def load_arrays(path: str | os.PathLike[str], model_config: ModelConfig) -> dict:
    """A weights file as NumPy arrays (no torch), checked as ``checkpoint.load_weights`` checks it: the
    names and shapes fit the config, the values are finite and ``head.rank`` is an order of the ids."""
    import numpy as np
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise ChargenError(f"{path} is missing; the run folder is incomplete")
    check_weights_header(path, model_config)
    try:
        arrays = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ChargenError(
            f"{path} is not a readable safetensors file ({str(e).splitlines()[0]}); the run folder is corrupt"
        ) from None
    for k, v in arrays.items():
        if v.dtype.kind not in "fiu":
            raise ChargenError(f"{path} holds {k} as {v.dtype}, not numbers; the run folder is corrupt")
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            raise ChargenError(f"{path} holds non-finite values in {k}; the run folder is corrupt")
    rank = arrays.get("head.rank")
    if rank is not None and not np.array_equal(np.sort(rank), np.arange(rank.size)):
        raise ChargenError(
            f"{path} holds a head.rank that is not an order of the characters; the run folder is corrupt"
        )
    return arrays


def _model_config(section: object) -> ModelConfig:
    cfg = ModelConfig(**_complete(ModelConfig, section))
    if cfg.softmax == "auto" or (cfg.adaptive and cfg.cutoffs is None):
        raise ValueError("softmax must be full, or adaptive with its cutoffs")
    return cfg


def _section(run_dir: Path, name: str, build: Callable[[], _T]) -> _T:
    try:
        return build()
    except (TypeError, ValueError) as e:  # ChargenError is a ValueError
        raise ChargenError(f"{run_dir}/config.json has a bad {name} section ({e}); the run folder is corrupt") from None


# Options added after format 1 was fixed, with the value that gives a run written before them the
# behaviour it was trained with.
_ADDED_LATER: dict[str, dict[str, Any]] = {
    # eval_chars: every validation character was scored. tf32: the default (on CUDA a resume is not bit-exact
    # in any case, and TF32 changes only the rounding of float32 products there).
    "TrainConfig": {"eval_chars": 0, "tf32": True},
    "ModelConfig": {"softmax": "full", "cutoffs": None, "input_dropout": 0.0, "output_dropout": 0.0},
}


def _complete(cls: type[ModelConfig | TrainConfig], section: object) -> dict[str, Any]:
    """The section's values for ``cls``; every field must be there (a run writes them all), except
    those added later, which take the value that keeps an older run's behaviour."""
    if not isinstance(section, dict):
        raise TypeError("not a JSON object")
    section = {**_ADDED_LATER.get(cls.__name__, {}), **section}
    names = [f.name for f in fields(cls)]
    missing = [n for n in names if n not in section]
    if missing:
        raise TypeError(f"missing {', '.join(missing)}")
    return {n: section[n] for n in names}


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --------------------------------------------------------------------------- the lock


class RunLock:
    """An exclusive, non-blocking lock on a run folder, released when the holder ends (even by kill -9).

    ``RunLock(run_dir)`` takes it or raises a ChargenError naming the process
    that holds it. :meth:`release` removes the lock file and lets go.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None
        try:
            import fcntl
        except ImportError:  # Windows: no flock; runs are not locked there
            return
        while self._fd is None:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
            except OSError as e:
                raise ChargenError(
                    f"cannot lock {run_dir}: {e.strerror} ({self.path}); check the folder's "
                    "permissions or choose another --out"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise ChargenError(
                    f"{run_dir} is in use: {holder} is training into it; wait for it to end "
                    "or stop it, or choose another --out"
                ) from None
            # A holder that was just releasing may have unlinked the file we opened: the lock
            # counts only if our file is still the one at that path.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
            else:
                os.close(fd)
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"process {os.getpid()} on {socket.gethostname()} ({_command()})\n".encode())

    def release(self) -> None:
        """Remove the lock file and let go of the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __del__(self):
        self.release()


def _command(limit: int = 200) -> str:
    """This process's command line as the user typed it (``chargen train ...``), shortened."""
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    if program in ("chargen", "__main__.py"):
        program = "chargen"
    text = " ".join([program, *sys.argv[1:]])
    return text if len(text) <= limit else text[: limit - 1] + "…"
