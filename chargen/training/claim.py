"""Claiming a new run's folder: made if missing, locked, checked, and undone if the run never starts.

A run that ``--overwrite`` replaces is not touched until the new run exists:
the new one is built in a hidden folder inside it and moved into its place at
its first checkpoint (see ``runs/replace.py``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..data.prepared import PreparedCorpus
from ..errors import ChargenError
from ..files import write_json
from ..runs import replace
from ..runs.folder import LOCK_FILE, RunLock, looks_like_run


class RunClaim:
    """Rank 0's hold on a new run's folder: made if missing, locked, checked; undone if the run never starts.

    An overwritten run is replaced at the new run's first checkpoint
    (:meth:`settle`). Until then :meth:`abandon` removes what this claim made
    (the new run's files, and any folders it created, when empty) and nothing
    else: a folder it could not lock is never touched.
    """

    def __init__(self, out: Path, overwrite: bool):
        if out.is_symlink() and not out.exists():
            raise ChargenError(f"{out} is a symbolic link to a missing folder; choose another --out")
        if out.exists() and not out.is_dir():
            raise ChargenError(f"{out} is a file, not a run folder; choose another --out")
        self.out, self.overwrite, self.filled = out, overwrite, False
        self.made = _make_dirs(out)  # folders this call created, deepest first
        self.dir = out  # where the new run is built
        try:
            self.lock = RunLock(out)
        except BaseException:
            self._prune()
            raise
        try:
            replace.recover(out, LOCK_FILE)  # what a replacement cut short by a kill left behind
            if self._check_contents():
                self.dir = self._stage()
        except BaseException:
            self.lock.release()
            self._prune()
            raise

    @property
    def staged(self) -> bool:
        """Whether the new run is being built beside an old one it will replace."""
        return self.dir != self.out

    def _check_contents(self) -> bool:
        """Whether ``out`` holds a run to replace; refuses a folder that may not be written into."""
        if not any(p.name != LOCK_FILE for p in self.out.iterdir()):
            return False
        is_run = looks_like_run(self.out)
        if not self.overwrite:
            if is_run and not (self.out / "last").is_dir() and not (self.out / "last.old").is_dir():
                raise ChargenError(  # stopped (kill -9, a crash) before its first checkpoint: nothing to resume
                    f"{self.out} holds a run that stopped before its first checkpoint; pass --overwrite to "
                    "start it again, or choose another --out"
                )
            what = "a run" if is_run else "not empty"
            raise ChargenError(
                f"{self.out} already exists ({what}); pass --resume to continue it, --overwrite to "
                "replace it, or choose another --out"
            )
        if not is_run:
            raise ChargenError(
                f"{self.out} exists and is not a chargen run folder; --overwrite only replaces "
                "runs. Choose another --out"
            )
        return True

    def _stage(self) -> Path:
        try:
            return replace.stage(self.out)
        except OSError as e:
            raise ChargenError(
                f"cannot write into {self.out} ({e.strerror}); --overwrite needs the run folder "
                "writable. Check its permissions or choose another --out"
            ) from None

    def fill(self, config: dict, corpus: PreparedCorpus) -> None:
        """Write the new run's config and vocabulary."""
        self.filled = True
        write_json(self.dir / "config.json", config)
        corpus.vocab.save(self.dir / "tokenizer.json")

    def settle(self) -> Path:
        """The new run exists (its first checkpoint is written): put it in place of the old. Returns its folder."""
        if self.staged:
            replace.move_in(self.dir, self.out, LOCK_FILE)
            self.dir = self.out
        return self.dir

    def abandon(self) -> None:
        """Undo this claim (the run never reached its first checkpoint), and let go of the lock."""
        if self.staged:  # the old run was never touched
            shutil.rmtree(self.dir, ignore_errors=True)
        elif self.filled:  # everything in the folder is this run's: it was empty before
            for p in self.out.iterdir():
                if p.name != LOCK_FILE:
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        self.lock.release()
        self._prune()

    def _prune(self) -> None:
        """Remove the folders this claim created, deepest first, as long as they are empty."""
        for d in self.made:
            try:
                d.rmdir()
            except OSError:  # not empty: another run lives there now
                break


def _make_dirs(path: Path) -> list[Path]:
    """``mkdir -p path``; the folders that did not exist before, deepest first."""
    missing = []
    for p in [path, *path.parents]:
        if p.exists() or p.is_symlink():
            break
        missing.append(p)
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue  # made by another process just now: not ours to remove
        except OSError as e:
            for made in missing[missing.index(d) + 1 :]:
                try:
                    made.rmdir()
                except OSError:
                    break
            raise ChargenError(
                f"cannot create {d}: {e.strerror}; check the permissions of its parent or choose another --out"
            ) from None
    return missing
