"""Errors a user can cause, and how a command reports them.

A ``UserError`` is a mistake in the input (a file, an option, a config key) or a right the user
lacks on the tracking server: commands print its one-line message and exit with status 2. A
tracking server's 401 or 403 that no command foresaw is reported the same way (``legoexp.rights``
words it). Anything else is a bug and keeps its traceback.
"""

import gc
import sys
from collections.abc import Callable

EXIT_USAGE = 2


class UserError(Exception):
    """An input the user can fix; the message says which one and what was expected."""


class DataError(UserError):
    """A data file or directory that is missing, unreadable or not what legoexp reads."""


class ConfigError(UserError):
    """An option or config-file value that is unknown or out of range."""


class AccessError(UserError):
    """The tracking server refused the user: no valid login (401) or no right to a request (403)."""


def run_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a command's ``main`` and exit: 2 with a one-line message on a ``UserError`` or a refusal
    of the tracking server."""
    try:
        code = main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except Exception as e:
        error = e if isinstance(e, UserError) else _refusal(e)
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        code = EXIT_USAGE
    # The collector's last pass over every object at exit takes 1-3 s once MLflow, MXNet and pandas
    # are loaded; nothing needs it (exit handlers still run, and the OS takes the memory back).
    gc.freeze()
    sys.exit(code or 0)


def _refusal(error: Exception) -> AccessError | None:
    if "mlflow" not in sys.modules:  # nothing has talked to a tracking server
        return None
    from legoexp.rights import refusal

    return refusal(error)
