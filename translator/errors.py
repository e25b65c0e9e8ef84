"""The one exception family for problems a user can fix (bad files, config, flags).

``cli.py`` turns any :class:`UserError` into a single line on stderr and exit code 2.
"""


class UserError(Exception):
    """Bad input: the message names the file, line or key, and what to do."""
