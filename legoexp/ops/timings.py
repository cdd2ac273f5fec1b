"""Where a command's wall time goes, from the start of its process: laps and the training inside them.

A command calls ``lap(name)`` at the end of each stage (``startup`` ends after the imports and the
data, then ``setup``, ``search``, ...): a lap holds the time since the previous lap, or since the
process started. Time spent waiting for models to train (``with training():``) inside a lap is
counted apart, so a lap that trains splits into ``<lap>_training`` and ``<lap>_bookkeeping``. The
parts add up to the process's wall time so far; ``metrics()`` gives them as ``time_<part>_s``, with
``time_total_s`` and ``overhead_share`` (the share of the wall time not spent training and
evaluating models), for the sweep's parent run and the benchmark.
"""

import contextlib
import os
import time

from legoexp.ops.proc import start_ticks

_parts: dict[str, float] = {}
_training_since_lap = 0.0
_last_lap: float | None = None  # perf_counter() of the last lap


def _started() -> float:
    """The process's start as a ``perf_counter()`` reading (Linux: from /proc; elsewhere: this module's load)."""
    now, ticks = time.perf_counter(), start_ticks(os.getpid())
    if ticks is None:
        return now
    return now - (time.clock_gettime(time.CLOCK_BOOTTIME) - int(ticks) / os.sysconf("SC_CLK_TCK"))


_STARTED = _started()  # every reading after this one is perf_counter's, so the parts never outrun the total


def since_start() -> float:
    """Seconds since this process started."""
    return time.perf_counter() - _STARTED


def lap(name: str) -> None:
    """Close the stage ``name``: the time since the previous lap (or the process start) is its."""
    global _last_lap, _training_since_lap
    now = time.perf_counter()
    spent = now - (_last_lap if _last_lap is not None else _STARTED)
    if _training_since_lap:
        _add(f"{name}_training", _training_since_lap)
        _add(f"{name}_bookkeeping", spent - _training_since_lap)
    else:
        _add(name, spent)
    _last_lap, _training_since_lap = now, 0.0


@contextlib.contextmanager
def training():
    """Time spent here (waiting for a fit, or fitting and scoring) is training, not bookkeeping."""
    global _training_since_lap
    started = time.perf_counter()
    try:
        yield
    finally:
        _training_since_lap += time.perf_counter() - started


def _add(name: str, seconds: float) -> None:
    _parts[name] = _parts.get(name, 0.0) + seconds


def parts() -> dict[str, float]:
    """Seconds per part, in the order the laps came, then ``rest``: what no lap has closed yet."""
    total = since_start()
    return {**_parts, "rest": max(0.0, total - sum(_parts.values()))}


def metrics() -> dict[str, float]:
    """``time_<part>_s`` for every part, ``time_total_s``, and ``overhead_share``."""
    seconds = parts()
    total = sum(seconds.values())
    training = sum(v for k, v in seconds.items() if k.endswith("_training"))
    return ({f"time_{k}_s": v for k, v in seconds.items()}
            | {"time_total_s": total, "overhead_share": 1 - training / total if total else 0.0})
