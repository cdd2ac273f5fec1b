"""Errors a user can cause, and how a command reports them.

A ``UserError`` is a mistake in the input (a file, an option, a config key) or a right the user
lacks on the tracking server: commands print its one-line message and exit with status 2
(``ops.command.run_main``). Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """An input the user can fix; the message says which one and what was expected."""


class DataError(UserError):
    """A data file or directory that is missing, unreadable or not what legoexp reads."""


class ConfigError(UserError):
    """An option or config-file value that is unknown or out of range."""


class AccessError(UserError):
    """The tracking server refused the user: no valid login (401) or no right to a request (403)."""


def first_line(error: BaseException) -> str:
    """An error's first line of text, or its type's name when it has none: what a one-line message quotes."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
