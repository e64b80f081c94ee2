"""The run folder: its layout, reading and validating it, and the lock held while training into it.

::

    RUN/
      config.json          model config, train config, corpus summary, versions, format version
      tokenizer.json       the vocabulary (tokenizers.Tokenizer.from_file loads it)
      model.safetensors    best weights so far by validation loss, CPU tensors
      last/                what --resume needs (see checkpoint.py)
      metrics.jsonl        one JSON object per log line
      .lock                present while a process trains into the folder

:func:`open_run_dir` is the one validation of a run folder, used by
``Sampler.load``, ``--resume`` and ``chargen info``: the files are there, the
config is of a format this chargen reads, the model section is a valid
``ModelConfig``, and the vocabulary matches it.

:class:`RunLock` is an OS file lock (``flock``) on ``RUN/.lock``: it dies with
the process that holds it, so a run killed with ``kill -9`` never locks the
next one out.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import ChargenError
from .files import FILE_MODE

FORMAT_VERSION = 1
RUN_FILES = ("config.json", "tokenizer.json", "model.safetensors")
LAST_FILES = ("model.safetensors", "optimizer.safetensors", "state.safetensors", "trainer.json")
LOCK_FILE = ".lock"


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
    if not run_dir.is_dir():
        raise ChargenError(f"run folder {run_dir} does not exist; train one with chargen train --out {run_dir}")
    missing = [f for f in RUN_FILES if not (run_dir / f).is_file()]
    if missing:
        raise ChargenError(f"{run_dir} is not a complete run folder (missing {', '.join(missing)}); "
                           "train it again or point at another run")
    return run_dir


def read_config(run_dir: Path) -> dict:
    """``config.json``, checked for a format this chargen reads and for its sections."""
    config = read_json(Path(run_dir) / "config.json")
    version = config.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise ChargenError(f"{run_dir} was written by a newer chargen (run format {version}; this chargen "
                           f"reads format {FORMAT_VERSION}): upgrade chargen (pip install -U chargen)")
    if version != FORMAT_VERSION:
        raise ChargenError(f"{run_dir}/config.json has format version {version!r}; this chargen reads "
                           f"version {FORMAT_VERSION}: the run folder is corrupt, retrain it")
    for key in ("model", "train", "corpus"):
        if not isinstance(config.get(key), dict):
            raise ChargenError(f"{run_dir}/config.json has no {key!r} section; the run folder is corrupt")
    return config


def last_dir(run_dir: Path) -> Path:
    """``last/``, or ``last.old/`` if a crash hit between the two renames of a swap."""
    run_dir = Path(run_dir)
    for name in ("last", "last.old"):
        d = run_dir / name
        if all((d / f).is_file() for f in LAST_FILES):
            return d
    raise ChargenError(f"{run_dir} has no complete last/ checkpoint to resume from; "
                       "start a new run (pass --overwrite to replace this one)")


@dataclass
class RunFolder:
    """A validated run folder: its config, model config and vocabulary."""

    dir: Path
    config: dict
    model_config: "ModelConfig"  # noqa: F821 (imported lazily: torch)
    vocab: "CharVocab"           # noqa: F821


def open_run_dir(run_dir: str | os.PathLike) -> RunFolder:
    """Read and check a run folder (see the module docstring); any problem is a ChargenError."""
    from .config import ModelConfig
    from .tokenizer import CharVocab

    run_dir = check_run_dir(Path(run_dir))
    config = read_config(run_dir)
    try:
        model_config = ModelConfig.from_dict(config["model"])
    except (TypeError, ChargenError) as e:
        raise ChargenError(f"{run_dir}/config.json has a bad model section ({e}); the run folder is corrupt") from None
    vocab = CharVocab.load(run_dir / "tokenizer.json")
    if len(vocab) != model_config.vocab_size:
        raise ChargenError(f"{run_dir}/tokenizer.json has {len(vocab)} characters but the model expects "
                           f"{model_config.vocab_size}; the run folder is corrupt")
    return RunFolder(run_dir, config, model_config, vocab)


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
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise ChargenError(f"{run_dir} is in use: {holder} is training into it; wait for it to end "
                                   "or stop it, or choose another --out") from None
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
