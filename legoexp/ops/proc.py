"""What ``/proc`` says of a process, and child processes that end with their parent and leave its signals to it.

A pid alone does not name a process: the kernel reuses pids. The pair (pid, start time) does, so
``start_ticks`` is what the sweep's claims, its fold directories and the timings read to tell a
live owner from a dead one, and to anchor a command's wall time at its process's start.
"""

import contextlib
import os
import signal
import threading
import time


def start_ticks(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks after boot (/proc/PID/stat field 22), or None
    when there is no such process (or no /proc: not Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[19]  # the fields after the name start at 3
    except (OSError, IndexError):
        return None


def die_with(parent: int) -> None:
    """End this (child) process when ``parent`` goes, even by ``kill -9`` (it gets no chance to stop us)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # it died before prctl took hold
            os._exit(1)
    except OSError:  # not Linux: watch the parent instead
        def watch():
            while os.getppid() == parent:
                time.sleep(1)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()


@contextlib.contextmanager
def signals_ignored():
    """SIGINT and SIGTERM ignored here while child processes start, which inherit that (a spawned Python
    keeps an ignored SIGINT ignored); the handlers are back afterwards. Call it in the main thread."""
    saved = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def quietly(fn) -> None:
    """Run ``fn`` with this process's stderr (the file descriptor) sent to /dev/null."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        fn()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def load_mxnet_on_every_core() -> None:
    """Load MXNet so that its operators use every core this process may run on, in a process that
    trains alone (the baseline, the benchmark's fit). MXNet's default on x86 is half the cores,
    counting on hyper-threads: one of a 2-core machine's two, where two make the fit about a quarter
    faster with the same numbers bit for bit (docs/performance.md). A user's
    ``OMP_NUM_THREADS`` is kept; the setting reaches MXNet alone, not the processes this one starts
    (fold workers run one thread each). Nothing if MXNet is loaded already."""
    import sys

    if "mxnet" in sys.modules or "OMP_NUM_THREADS" in os.environ:
        return
    os.environ["OMP_NUM_THREADS"] = str(len(os.sched_getaffinity(0)))  # read once, as MXNet and OpenMP load
    try:
        import mxnet  # noqa: F401
    finally:
        del os.environ["OMP_NUM_THREADS"]
