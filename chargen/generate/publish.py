"""An export's folder, written whole or not at all (``chargen export``'s ONNX step and its ``--web`` page).

The files are written into a hidden folder inside the target and then renamed into place, the file that
marks the folder as an export last, so the folder keeps its mode and owner and a failure leaves it as it
was (a folder made for the export is removed). The target must be new, or empty, or (with ``overwrite``)
hold an earlier export of the same kind and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import ChargenError, StorageError, write_failure
from ..files import DIR_MODE, fsync_dir

__all__ = ["STAGE", "check_outside", "check_target", "holds_mark", "publish"]

STAGE = ".chargen-export-"


def publish(
    out: Path,
    files: tuple[str, ...],
    overwrite: bool,
    is_ours: Callable[[Path], bool],
    write: Callable[[Path], None],
    kind: str = "a chargen export",
) -> Path:
    """Write ``files`` into the folder ``out``: ``write(stage)`` puts them in a fresh folder, which are then
    renamed into ``out`` in the order given (the marking file last). ``is_ours(out)`` says whether an
    existing folder holds an export of this ``kind`` (only that may be overwritten)."""
    check_target(out, files, overwrite, is_ours, kind)
    made = make_dirs(out)
    stage = None
    try:
        _remove_dead_stages(out)
        stage = Path(tempfile.mkdtemp(prefix=f"{STAGE}{os.getpid()}-", dir=out))
        write(stage)
        check_target(out, files, overwrite, is_ours, kind)  # again: another export may have landed meanwhile
        from ..signals import StopRequest

        # The renames take moments and go through together: Ctrl-C, SIGTERM or SIGHUP meanwhile is held, and
        # then moot, since the export is whole (a second one still stops at once).
        with StopRequest():
            for name in files:
                os.replace(stage / name, out / name)
        fsync_dir(out)
        made = []
    except (OSError, StorageError) as e:
        cause = write_failure(e)
        raise ChargenError(
            f"cannot write the export into {out} ({cause}); free some space or choose a folder you can write to"
        ) from None
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        for d in reversed(made):  # what this export created, if it did not finish
            with contextlib.suppress(OSError):
                d.rmdir()
    return out


def holds_mark(path: Path, name: str, key: str) -> bool:
    """Whether ``path``'s JSON file ``name`` marks it as an export: an object whose ``key`` is a format number."""
    try:
        with open(Path(path) / name, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and type(meta.get(key)) is int


def check_outside(out: Path, run_dir: str | os.PathLike[str]) -> None:
    """A ChargenError when ``out`` is the run folder or inside it: an export is a folder of its own."""
    try:
        inside = Path(out).resolve().is_relative_to(Path(run_dir).resolve())
    except (OSError, RuntimeError):  # a loop of links: check_target and open_run_dir name it
        return
    if inside:
        raise ChargenError(f"{out} is inside the run folder {run_dir}; choose a folder outside the run for the export")


def _remove_dead_stages(out: Path) -> None:
    """Remove the stages of exports whose process is gone (killed outright: SIGKILL, out of memory), so that
    a static host never publishes their partial files. A stage is named by its process's id."""
    for stage in out.glob(f"{STAGE}*"):
        pid = stage.name[len(STAGE) :].partition("-")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(stage, ignore_errors=True)
        except OSError:  # alive, another user's: leave it
            pass


def check_target(
    out: Path, files: tuple[str, ...], overwrite: bool, is_ours: Callable[[Path], bool], kind: str
) -> None:
    """A ChargenError unless ``out`` may take the export (see the module docstring)."""
    try:
        if out.is_symlink() or (out.exists() and not out.is_dir()):
            raise ChargenError(f"{out} exists and is not a folder; choose a new folder for the export")
        if not out.is_dir():
            return
        entries = sorted(p.name for p in out.iterdir() if not p.name.startswith(STAGE))
    except OSError as e:
        raise ChargenError(f"cannot use {out} as the export folder ({e.strerror or e}); choose another") from None
    if not entries:
        return
    if not is_ours(out):
        raise ChargenError(
            f"{out} exists and is not {kind}; choose a new or empty folder "
            "(--overwrite only replaces an earlier export)"
        )
    others = [name for name in entries if name not in files]
    if others:
        raise ChargenError(
            f"{out} holds files that are not the export's ({', '.join(others[:3])}"
            f"{' and more' if len(others) > 3 else ''}); an export gets a folder of its own: "
            "choose a new or empty folder"
        )
    if not overwrite:
        raise ChargenError(f"{out} already holds an export; pass --overwrite to replace it")


def make_dirs(out: Path) -> list[Path]:
    """Make ``out`` and any missing parents; the folders made, outermost first."""
    missing = []
    p = out.absolute()
    while not p.exists():
        missing.append(p)
        p = p.parent
    made = []
    try:
        for d in reversed(missing):
            d.mkdir(mode=DIR_MODE)
            made.append(d)
    except OSError as e:
        for d in reversed(made):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise ChargenError(
            f"cannot make the folder {out} ({e.strerror or e}); choose a folder you can write to"
        ) from None
    return made
