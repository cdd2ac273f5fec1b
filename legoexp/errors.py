"""Errors a user can cause, and how a command reports them.

A ``UserError`` is a mistake in the input (a file, an option, a config key): commands print its
one-line message and exit with status 2. Anything else is a bug and keeps its traceback.
"""

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
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
