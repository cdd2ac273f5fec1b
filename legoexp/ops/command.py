"""How a command's ``main`` runs and ends: the exit status, a user's error in one line, and stop signals.

A ``UserError`` is printed as ``error: <message>`` and ends the command with status 2; so is a
tracking server's 401 or 403 that no command foresaw (``access.rights.refusal`` words it).
Anything else is a bug and keeps its traceback.

SIGTERM, what Kubernetes and Slurm send before SIGKILL, is handled as Ctrl-C (SIGINT) is: it raises
``Terminated``, a ``KeyboardInterrupt``, so the command ends what it holds on its way out (trials
FAIL, their runs KILLED, a registry change undone) and exits with 143 (130 for Ctrl-C), saying so
in one line. A second SIGTERM or SIGINT while it cleans up is noted and ignored: the cleanup is
never cut in half.
"""

import gc
import signal
import sys
from collections.abc import Callable

from legoexp.errors import AccessError, UserError

EXIT_USAGE = 2


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: the command stops as on Ctrl-C."""


_stopping: list[int] = []  # the signals received; only the first one stops the command


def _stop(signum, frame) -> None:
    _stopping.append(signum)
    if len(_stopping) == 1:
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def handle_stop_signals() -> None:
    """SIGTERM and SIGINT raise once (``Terminated``, ``KeyboardInterrupt``), then are ignored."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(signum) is not signal.SIG_IGN:  # ignored on purpose by whoever started us
            signal.signal(signum, _stop)


def run_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a command's ``main`` and exit: 2 with a one-line message on a ``UserError`` or a refusal
    of the tracking server."""
    handle_stop_signals()
    try:
        code = main(argv)
    except KeyboardInterrupt as e:
        terminated = isinstance(e, Terminated)
        if not getattr(e, "reported", False):  # the sweep says more (how many trials finished)
            print("terminated (SIGTERM)" if terminated else "interrupted", file=sys.stderr)
        code = 143 if terminated else 130
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
    from legoexp.access.rules import refusal

    return refusal(error)
