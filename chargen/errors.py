"""The one exception type for mistakes a user can make."""


class ChargenError(ValueError):
    """A problem with the user's input, options or files.

    The message says what is wrong and what to do about it. The command line
    prints it as one line and exits with status 2; bugs stay ordinary
    exceptions with tracebacks.
    """


class Interrupted(KeyboardInterrupt):
    """Ctrl-C that chargen has already handled and reported (a checkpoint saved, a line printed)."""
