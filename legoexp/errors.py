"""Errors a user can cause, and how a command reports them.

A ``UserError`` is a mistake in the input (a file, an option, a config key): commands print its
one-line message and exit with status 2. Anything else is a bug and keeps its traceback.
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


def run_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a command's ``main`` and exit: 2 with a one-line message on a ``UserError``."""
    try:
        code = main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        code = EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    # The collector's last pass over every object at exit takes 1-3 s once MLflow, MXNet and pandas
    # are loaded; nothing needs it (exit handlers still run, and the OS takes the memory back).
    gc.freeze()
    sys.exit(code or 0)
