"""Shared fixtures: the lab's real files, temporary MLflow stores, and running commands for real."""

import os
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


def write_lab_file(path: Path, images, labels) -> None:
    """Write uint8 images (N, 48, 48, 1) and labels (N,) as the lab's files are: MXNet's own pickle
    of an ArrayDataset, protocol 3, with ``numpy.dtype`` reduced to ('u1', 0, 1) as the NumPy that
    wrote the lab's files did (NumPy 1.23 writes False, True). The result is byte for byte a lab file."""
    import copyreg
    import pickle

    import mxnet as mx
    import numpy as np

    dataset = mx.gluon.data.ArrayDataset(mx.nd.array(images, dtype=np.uint8), labels)
    with open(path, "wb") as f:
        pickler = pickle.Pickler(f, protocol=3)
        pickler.dispatch_table = {**copyreg.dispatch_table,
                                  type(labels.dtype): lambda d: (np.dtype, (d.str[1:], 0, 1), d.__reduce__()[2])}
        pickler.dump(dataset)


@pytest.fixture(scope="session")
def generated_lab_dir(tmp_path_factory) -> Path:
    """The generated set (``synthetic``) written as the lab's two pickles: every user's machine has it."""
    import numpy as np

    from legoexp.data import LAB_FILES, load_split, open_source

    directory = tmp_path_factory.mktemp("generated-lab")
    source = open_source("synthetic")
    for split, name in LAB_FILES.items():
        data = load_split(source, split)
        write_lab_file(directory / name, data.images[..., None], data.labels.astype(np.uint8))
    return directory


@pytest.fixture(params=["generated", "lab"])
def lab_format_dir(request) -> Path:
    """A directory of lab pickles: the generated set written in the lab's format (always there),
    and the lab's own files (skipped without them, a failure under CI=true)."""
    return request.getfixturevalue("generated_lab_dir" if request.param == "generated" else "lab_dir")


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory) -> str:
    """One temporary SQLite tracking store for the session (its migrations take ~2 s), made now: commands
    that only read a store (promote, predict, reproduce) refuse one that does not exist."""
    directory = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{directory}/mlflow.db"
    from mlflow.tracking import MlflowClient

    MlflowClient(uri).search_experiments()
    return uri


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


def state(pid: int) -> str | None:
    """A process's state letter (R, S, T for stopped, Z for a zombie ...), or None when there is none."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


def faults_env(env: dict, spec: str, once: Path) -> dict:
    """``env`` with the fault plan ``spec`` (see legoexp/ops/faults.py) for the first process to reach it."""
    return {**env, "LEGOEXP_FAULTS": spec, "LEGOEXP_FAULTS_ONCE": str(once)}


def held_at_fault(proc: subprocess.Popen, once: Path, timeout: float = 300) -> int:
    """The pid of the process of command ``proc`` that stopped itself at its fault point (``stop``),
    once it is stopped there. Fails as soon as the command has ended without getting there."""
    deadline = time.monotonic() + timeout
    while True:
        text = once.read_text() if once.exists() else ""
        if text.isdigit() and state(int(text)) == "T":
            return int(text)
        if proc.poll() is not None:
            raise AssertionError(f"the command ended (exit {proc.returncode}) before its fault point")
        if time.monotonic() > deadline:
            raise AssertionError(f"no process held at the fault point after {timeout} s")
        time.sleep(0.05)
