"""Replacing a run folder's contents without losing the old run before the new one exists.

``--overwrite`` builds the new run in a hidden folder inside the old one
(``RUN/.chargen-new-XXXXXXXX``), so it is on the same filesystem whatever
``RUN`` is (a mount point, the working folder), and the old run stays whole
and readable while the new one starts. At the new run's first checkpoint,
:func:`move_in` swaps the contents, keeping the folder itself (its mode,
group and identity):

1. the old entries go into ``RUN/.chargen-old-XXXXXXXX``, ``config.json``
   first, so that from the first rename on the folder is not a run;
2. a ``.moving`` mark is written in the stage: the old run is all out;
3. the new entries come in, ``config.json`` last, so the folder is a run
   again only once it is whole; then the two hidden folders are removed.

A process killed at any point leaves something :func:`recover` completes or
undoes the next time the folder is claimed: before step 2 the old run is put
back; after it the new run is moved in. Only names of exactly this shape are
ever removed, and only inside a folder chargen holds the lock of.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from ..files import DIR_MODE, fsync_dir

STAGE, TRASH, MOVING = ".chargen-new-", ".chargen-old-", ".moving"
_OURS = re.compile(r"^\.chargen-(new|old)-[a-z0-9_]{8}$")


def stage(target: Path) -> Path:
    """A new, empty hidden folder inside ``target`` for the new run."""
    staged = Path(tempfile.mkdtemp(prefix=STAGE, dir=target))
    os.chmod(staged, DIR_MODE)
    return staged


def move_in(staged: Path, target: Path, lock_name: str) -> None:
    """Replace ``target``'s entries (but its lock file) by ``staged``'s (see the module docstring)."""
    trash = Path(tempfile.mkdtemp(prefix=TRASH, dir=target))
    _move_out(target, trash, keep={lock_name})
    _mark_moving(staged)
    _finish(staged, target)
    shutil.rmtree(trash, ignore_errors=True)


def recover(target: Path, lock_name: str) -> None:
    """Complete or undo a :func:`move_in` that was cut short, and remove abandoned stages."""
    ours = sorted(p for p in target.iterdir() if _OURS.match(p.name) and p.is_dir() and not p.is_symlink())
    stages = [p for p in ours if p.name.startswith(STAGE)]
    trashes = [p for p in ours if p.name.startswith(TRASH)]
    moving = [s for s in stages if (s / MOVING).exists()]
    if moving:  # the old run was all out: bring the new one in
        _finish(moving[0], target)
    elif trashes and not (target / "config.json").exists():  # cut short while moving the old run out: undo
        keep = {lock_name, *(p.name for p in ours)}
        for trash in trashes:
            for p in trash.iterdir():
                if p.name not in keep and not (target / p.name).exists():
                    os.rename(p, target / p.name)
        fsync_dir(target)
    for p in ours:
        shutil.rmtree(p, ignore_errors=True)


def _move_out(target: Path, trash: Path, keep: set) -> None:
    old = [p for p in target.iterdir() if p.name not in keep and not _OURS.match(p.name)]
    for p in sorted(old, key=lambda p: p.name != "config.json"):  # config.json first
        os.rename(p, trash / p.name)
    fsync_dir(trash)
    fsync_dir(target)


def _mark_moving(staged: Path) -> None:
    fd = os.open(staged / MOVING, os.O_WRONLY | os.O_CREAT, 0o644)
    os.close(fd)
    fsync_dir(staged)


def _finish(staged: Path, target: Path) -> None:
    new = [p for p in staged.iterdir() if p.name != MOVING]
    for p in sorted(new, key=lambda p: p.name == "config.json"):  # config.json last
        os.rename(p, target / p.name)
    fsync_dir(target)
    shutil.rmtree(staged, ignore_errors=True)
