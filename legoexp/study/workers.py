"""``--jobs N``: N worker processes on one study, started and watched by the sweep's main process.

Each worker is the same command with ``--worker --parent-run-id ID``: it joins the study in the
shared Optuna storage, claims trials until the study has enough, logs them as children of the
parent run the main process created before starting any worker, and exits. Workers on other
machines run the very same command (see docs/scale-out.md). The main process only shows
progress; it redoes nothing a live worker holds, and whatever a dead worker left undone is
claimed again by the others or by the main process afterwards.
"""

import math
import os
import subprocess
import sys
import time
from collections.abc import Callable

import mlflow


def worker_command(cfg: dict, deadline: float = math.inf) -> list[str]:
    """The sweep command line that reproduces ``cfg`` exactly, for a worker, with its main sweep's deadline."""
    args = [sys.executable, "-m", "legoexp.sweep"]
    for key in cfg:
        args += [f"--{key.replace('_', '-')}", str(cfg[key])]
    return args + (["--deadline", repr(deadline)] if math.isfinite(deadline) else [])


def run_workers(jobs: int, command: list[str], parent_id: str, on_progress: Callable[[], None]) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    env.pop("MLFLOW_RUN_ID", None)  # workers log under the parent, not into `mlflow run`'s run
    procs = [subprocess.Popen([*command, "--worker", "--spawned", "--parent-run-id", parent_id], env=env)
             for _ in range(jobs)]
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(1)
            on_progress()
    except BaseException:  # Ctrl-C reaches the workers too; anything else: stop them
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        raise
    failed = [p.returncode for p in procs if p.returncode != 0]
    if failed:
        print(f"{len(failed)} of {jobs} workers ended with an error (exit {failed}); "
              "their unfinished trials are redone", file=sys.stderr)
