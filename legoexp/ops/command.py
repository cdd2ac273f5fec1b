"""How a command's ``main`` runs and ends: the exit status, and a user's error in one line.

A ``UserError`` is printed as ``error: <message>`` and ends the command with status 2; so is a
tracking server's 401 or 403 that no command foresaw (``access.rights.refusal`` words it).
Ctrl-C ends it with 130. Anything else is a bug and keeps its traceback.
"""

import gc
import sys
from collections.abc import Callable

from legoexp.errors import AccessError, UserError

EXIT_USAGE = 2


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
    # The collector's last pass over every object at exit takes seconds once MLflow, MXNet and pandas
    # are loaded (docs/performance.md); nothing needs it (exit handlers still run, and the OS takes the memory back).
    gc.freeze()
    sys.exit(code or 0)


def _refusal(error: Exception) -> AccessError | None:
    if "mlflow" not in sys.modules:  # nothing has talked to a tracking server
        return None
    from legoexp.access.rights import refusal

    return refusal(error)
