"""The one exception type for mistakes a user can make."""


class ChargenError(ValueError):
    """A problem with the user's input, options or files.

    The message says what is wrong and what to do about it. The command line
    prints it as one line and exits with status 2; bugs stay ordinary
    exceptions with tracebacks.
    """


class StorageError(ChargenError):
    """A file could not be written: the disk is full, a file-size or quota limit, a read-only or missing
    folder, an I/O error. ``path`` is the file meant to be written, ``cause`` the system's reason."""

    def __init__(self, path: object, cause: str, advice: str = "free some space or fix the folder, and run it again"):
        self.path, self.cause = path, cause
        super().__init__(f"cannot write {path}: {cause}; {advice}")


def write_failure(e: OSError | StorageError) -> str:
    """Why a write failed, in the system's words: a StorageError's cause, an OSError's message."""
    return e.cause if isinstance(e, StorageError) else (e.strerror or str(e))


class Interrupted(KeyboardInterrupt):
    """Ctrl-C that chargen has already handled and reported (a checkpoint saved, a line printed)."""
