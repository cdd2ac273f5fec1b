"""Shared fixtures: the lab's real files, temporary MLflow stores, and running commands for real."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAB_DATA = ROOT.parent / "shared" / "data"


def require(condition: bool, why: str) -> None:
    """Skip when a real part is missing on a user's machine; under CI a missing part fails."""
    if not condition:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why} (required under CI=true)")
        pytest.skip(why)


@pytest.fixture(scope="session")
def lab_dir() -> Path:
    require((LAB_DATA / "lego-simple-mx-train").is_file(), f"the lab's data files are not in {LAB_DATA}")
    return LAB_DATA


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory) -> str:
    """One temporary SQLite tracking store for the session (its migrations take ~2 s)."""
    directory = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{directory}/mlflow.db"


@pytest.fixture
def mlflow_env(tracking_uri, tmp_path, monkeypatch) -> dict:
    """Point this process and the commands it runs at the temporary store, from a temporary
    working directory (MLflow puts a SQLite store's artifacts in ./mlruns)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    return {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}


def run_module(module: str, *args, env=None, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` in a fresh process, as a user would."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


def kill_mid_trial(pids_mid_trial, timeout: float = 300) -> int:
    """SIGKILL a process in the middle of a trial and return its pid. ``pids_mid_trial()`` gives
    the pids whose trial is running now. The process is stopped first and looked at again: a
    short trial can end between the look and the kill, and the kill would then test nothing."""
    def look() -> set:
        try:
            return set(pids_mid_trial())
        except Exception:  # the study may not exist yet
            return set()

    deadline = time.time() + timeout
    while time.time() < deadline:
        pids = look()
        if pids:
            pid = min(pids)
            os.kill(pid, signal.SIGSTOP)
            if pid in look():
                os.kill(pid, signal.SIGKILL)
                return pid
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.2)
    raise AssertionError("no process was seen in the middle of a trial")
