"""The exception families ``cli.py`` turns into one line on stderr: :class:`UserError`
(a problem the user can fix: bad files, config, flags; exit code 2), :class:`RunError`
(a run that failed on its own; exit code 1) and :class:`Interrupted` (Ctrl-C; exit code 130).
"""


class UserError(Exception):
    """Bad input: the message names the file, line or key, and what to do."""


class RunError(Exception):
    """A run that failed on its own (e.g. training diverged): not bad input, but the message
    still says what happened and what to do. ``cli.py`` prints it as one line, exit code 1."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with a message saying where the run stands and how to go on. Still a
    ``KeyboardInterrupt`` for API callers; ``cli.py`` prints it as one line, exit code 130."""
