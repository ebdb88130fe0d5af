"""What counts as the user's mistake rather than a bug: the entry points (p2p_dist.cli.entry_point) print these as
one line and exit 2; anything else keeps its traceback, which is for bugs.

Imports nothing of the project, so every module can derive its own error types from these.
"""


class UserError(Exception):
    """Input the user gave (a path, a file's contents, a config key or value, a combination of settings) that
    cannot be used. The message names it and says what would work."""


class BadFileError(UserError, ValueError):
    """A file the user pointed at exists but is not what it should be (wrong kind, wrong shape, unsafe to load);
    the message names the file."""


# A path the user gave that is missing or unreadable is their input too, whichever code trips over it first (our
# checks, PIL, DALI's reader): the OS error's message names the path.
USER_ERRORS = (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
