"""What ran out: a full disk, a read-only file system, a folder the sweep may not write, in one line.

The sweep's tracking store, artifacts and Optuna journal go on a small tmpfs of the test's own
(root mounts it, and unmounts it after; elsewhere the tests skip, under CI=true they fail). The
sweep is held at a fault point (``legoexp/ops/faults.py``), the file system is filled behind its
back, and the sweep goes on: it must end with exit 2 and one line saying what it was writing,
where, and what ran out, with no traceback (MLflow's own logged ones included); once the filler is
deleted, the same command finishes the study and leaves nothing RUNNING. Real MLflow, Optuna and
SQLite throughout.
"""

import errno
import logging
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from conftest import faults_env, held_at_fault, require
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from legoexp.ops import logs, resources

SMALL = ["--folds", "2", "--seeds", "2", "--epochs", "2", "--trials", "3"]
RERUN = "then rerun the same command to resume"
# what _free_space prints: "(0 bytes free on the file system at DIR)"
FREE = r"\((?:\d+ bytes|\d+\.\d (?:KiB|MiB)) free on the file system at {}\)"


def _mounted(directory: Path) -> bool:
    return subprocess.run(["mountpoint", "-q", str(directory)]).returncode == 0


def _unmount(directory: Path, patience: float = 30) -> None:
    """Unmount ``directory``; while processes of the sweep still have files there (fold workers
    end a moment after their parent), retry until ``patience`` runs out, then detach it lazily."""
    deadline = time.monotonic() + patience
    while _mounted(directory):
        if subprocess.run(["umount", str(directory)], capture_output=True).returncode == 0:
            return
        if time.monotonic() > deadline:
            subprocess.run(["umount", "--lazy", str(directory)], check=True)
            return
        time.sleep(0.1)


@pytest.fixture
def tmpfs(tmp_path, monkeypatch):
    """``tmpfs(size)``: a new tmpfs of ``size`` (mount's units: 16m, 512k) mounted on a fresh directory;
    ``tmpfs.read_only(directory)``: a read-only bind mount of it. All unmounted after the test.
    MLflow clients of this process open SQLite without a pool, so no file stays open in them."""
    require(os.geteuid() == 0, "mounting a tmpfs needs root")
    monkeypatch.setenv("MLFLOW_SQLALCHEMYSTORE_POOLCLASS", "NullPool")
    monkeypatch.chdir(tmp_path)  # outside the mounts: the test process keeps none busy
    mounts = []

    def mount(size: str) -> Path:
        directory = tmp_path / f"fs{len(mounts)}"
        directory.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                              capture_output=True, text=True)
        require(done.returncode == 0, f"cannot mount a tmpfs at {directory}: {done.stderr.strip()}")
        mounts.append(directory)
        return directory

    def read_only(source: Path) -> Path:
        directory = tmp_path / f"ro{len(mounts)}"
        directory.mkdir()
        subprocess.run(["mount", "--bind", str(source), str(directory)], check=True)
        mounts.append(directory)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(directory)], check=True)
        return directory

    mount.read_only = read_only
    try:
        yield mount
    finally:
        for directory in reversed(mounts):
            _unmount(directory)


def _fill(directory: Path, leave: int = 0) -> Path:
    """Fill the file system of ``directory`` with one file of zeros, leaving about ``leave`` bytes
    (none: written until the kernel says ENOSPC). Returns the file."""
    filler = directory / "filler"
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb", buffering=0) as f:
        if leave:
            st = os.statvfs(directory)
            room = st.f_bavail * st.f_frsize - leave
            while room > 0:
                room -= f.write(chunk[:min(len(chunk), room)])
            return filler
        try:
            while True:
                f.write(chunk)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    st = os.statvfs(directory)
    assert st.f_bavail == 0, f"{st.f_bavail} blocks left on {directory}"
    return filler


def _env(store: Path) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db"}
    env.pop("MLFLOW_RUN_ID", None)
    return env


def _args(study: str) -> list[str]:
    return [sys.executable, "-m", "legoexp.sweep", "--study-name", study, "--experiment-name", study, *SMALL]


def _held_and_filled(store: Path, study: str, fault: str, tmp_path: Path, leave: int = 0) -> tuple[int, str]:
    """Run the sweep in ``store`` until it stops itself at ``fault``, fill the file system, let it go
    on; its exit status and stderr."""
    once, err = tmp_path / f"held-{study}", tmp_path / f"stderr-{study}.txt"
    with open(err, "w") as stderr:
        proc = subprocess.Popen(_args(study), env=faults_env(_env(store), f"{fault}=stop", once), cwd=store,
                                stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            pid = held_at_fault(proc, once)
            _fill(store, leave)
            os.kill(pid, signal.SIGCONT)
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return proc.returncode, err.read_text()


def _one_line(returncode: int, stderr: str, expected: str) -> re.Match:
    """The command ended with exit 2, no traceback of its own or of MLflow's loggers, and ``expected``
    (a regex) as its last line."""
    assert returncode == 2, stderr
    assert "Traceback" not in stderr and " ERROR " not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    found = re.fullmatch(expected, last)
    assert found, f"last line: {last}\nexpected: {expected}"
    return found


def _rerun_finishes(store: Path, study: str) -> list:
    """Rerun the same command: it ends 0 with 3 finished trials and no run RUNNING; returns the runs."""
    again = subprocess.run(_args(study), env=_env(store), cwd=store, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr
    trials = optuna.load_study(study_name=study, storage=JournalStorage(JournalFileBackend(
        str(store / "optuna.journal")))).get_trials()
    assert len([t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 3
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    client = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(study).experiment_id])
    assert not [(r.info.run_name, r.info.status) for r in runs if r.info.status == "RUNNING"]
    assert client.get_model_version_by_alias("lego-classifier", "challenger").tags["study_name"] == study
    return runs


@pytest.mark.slow
def test_a_disk_that_fills_while_the_comparison_logs_its_models(tmpfs, tmp_path):
    store, study = tmpfs("16m"), f"study-{uuid.uuid4().hex[:8]}"
    # held once the comparison's models are trained; 512 KiB left: room for the comparison run's
    # rows in the store, not for the first model's artifacts (MB: its code, its weights)
    returncode, stderr = _held_and_filled(store, study, "report.compared", tmp_path, leave=512 << 10)
    where = re.escape(str(store))
    _one_line(returncode, stderr, rf"error: writing the artifacts of logged model (m-[0-9a-f]{{32}}) at {where}/mlruns/"
              rf"\d+/models/\1/artifacts failed: no space left on the device {FREE.format(where)}; make room there, "
              f"{RERUN}")

    (store / "filler").unlink()
    runs = _rerun_finishes(store, study)
    comparisons = sorted(r.info.status for r in runs if r.data.tags["legoexp.kind"] == "comparison")
    # the one the full disk cut short ends FAILED, or KILLED by the rerun if the store could not take FAILED
    assert comparisons in (["FAILED", "FINISHED"], ["FINISHED", "KILLED"])


@pytest.mark.slow
def test_a_disk_that_fills_during_a_trial(tmpfs, tmp_path):
    store, study = tmpfs("16m"), f"study-{uuid.uuid4().hex[:8]}"
    # held when trial 0 is told to Optuna and its MLflow run is not yet ended; trial 1 is training
    returncode, stderr = _held_and_filled(store, study, "trial.told", tmp_path)
    where = re.escape(str(store))
    _one_line(returncode, stderr, rf"error: writing the tracking store sqlite:///{where}/mlflow\.db failed: the database "
              rf"or disk is full {FREE.format(where)}; make room there, {RERUN}")

    (store / "filler").unlink()
    runs = _rerun_finishes(store, study)
    trials = {r.info.run_name: r.info.status for r in runs if r.data.tags["legoexp.kind"] == "trial"}
    assert trials["trial-000"] == "FINISHED"  # told complete, so the rerun ends its run as complete


def _setpriv() -> list[str]:
    """As root, the prefix that runs a command without root's power to write what its rights forbid."""
    if os.geteuid() != 0:
        return []
    require(shutil.which("setpriv") is not None, "setpriv (util-linux) is not installed")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


@pytest.mark.parametrize("refusal", ["read-only", "permission denied"])
def test_a_store_the_sweep_may_not_write_ends_it_in_one_line(request, tmp_path, refusal):
    if refusal == "read-only":
        tmpfs = request.getfixturevalue("tmpfs")
        store, prefix, said = tmpfs.read_only(tmpfs("1m")), [], "read-only file system; make it writable"
    else:  # a folder of mode 0555, which root may write unless it drops that power
        store, prefix = tmp_path / "store", _setpriv()
        store.mkdir(mode=0o555)
        said = "permission denied; give this user write access to it"
    study = f"study-{uuid.uuid4().hex[:8]}"
    proc = subprocess.run([*prefix, *_args(study)], env=_env(store), cwd=store, capture_output=True, text=True,
                          timeout=300)
    # its first write is the study's lock file beside the journal
    _one_line(proc.returncode, proc.stderr, re.escape(f"error: writing the Optuna storage journal {store}/optuna.journal "
                                                      f"failed: {said}, {RERUN}"))


def test_real_failures_of_mlflow_and_optuna_name_what_ran_out(tmpfs, tmp_path, capfd):
    """The lines for errors that real MLflow, SQLite and Optuna raise on a full, then a read-only, file system."""
    store = tmpfs("4m")
    uri, journal = f"sqlite:///{store}/mlflow.db", store / "optuna.journal"
    places = resources.Places(uri, uri, f"journal:{journal}")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("e", artifact_location=str(store / "mlruns" / "1"))
    run = client.create_run(experiment).info.run_id
    study = optuna.create_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(journal))))
    artifact = tmp_path / "artifact.bin"
    artifact.write_bytes(os.urandom(64 << 10))

    def line(action, where=None) -> str:
        with pytest.raises(Exception) as raised:
            action()
        shortage = resources.find(raised.value, where or places)
        assert shortage is not None, raised.value
        return shortage.line()

    filler = _fill(store)
    free = f"(0 bytes free on the file system at {store}); make room there, {RERUN}"
    assert line(lambda: client.log_param(run, "k", "v")) == \
        f"writing the tracking store {uri} failed: the database or disk is full {free}"
    assert line(lambda: client.log_artifact(run, str(artifact))) == \
        f"writing the artifacts of run {run} at {store}/mlruns/1/{run}/artifacts failed: no space left on the device {free}"
    assert line(lambda: study.set_user_attr("note", "x" * 8192)) == \
        f"writing the Optuna storage journal {journal} failed: no space left on the device {free}"

    # MLflow logs its SQL store's errors with their traceback; under quiet() those records are dropped, others not
    capfd.readouterr()
    with logs.quiet() as silenced:
        with pytest.raises(Exception):
            client.set_tag(run, "k", "v")
        try:
            raise ValueError("kept")
        except ValueError:
            logging.getLogger("mlflow.store.db.utils").exception("an error of another kind")
    assert silenced.dropped >= 1 and resources.find(silenced.first) is not None
    shown = capfd.readouterr().err
    assert "an error of another kind" in shown and "ValueError: kept" in shown
    assert "disk is full" not in shown and shown.count("Traceback") == 1, shown
    with pytest.raises(Exception):  # outside quiet(): MLflow's record is shown as before
        client.set_tag(run, "k", "v")
    assert "database or disk is full" in capfd.readouterr().err

    filler.unlink()
    read_only = tmpfs.read_only(store)
    ro_uri, ro_journal = f"sqlite:///{read_only}/mlflow.db", read_only / "optuna.journal"
    places = resources.Places(ro_uri, ro_uri, f"journal:{ro_journal}")
    assert line(lambda: MlflowClient(tracking_uri=ro_uri).log_param(run, "k", "v")) == \
        (f"writing the tracking store {ro_uri} failed: the database is read-only (read-only file system at {read_only}); "
         f"make it writable, {RERUN}")
    ro_study = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(ro_journal))))
    assert line(lambda: ro_study.set_user_attr("note", "x")) == \
        f"writing the Optuna storage journal {ro_journal} failed: read-only file system; make it writable, {RERUN}"
    new_db = read_only / "new.db"  # a database SQLite may not create: "unable to open database file"
    assert line(lambda: sqlite3.connect(new_db).execute("CREATE TABLE t (x)"), resources.Places(f"sqlite:///{new_db}")) \
        == f"writing the tracking store sqlite:///{new_db} failed: read-only file system; make it writable, {RERUN}"
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    ro_artifacts = read_only / "mlruns" / "1" / run / "artifacts"
    assert line(lambda: LocalArtifactRepository(str(ro_artifacts)).log_artifact(str(artifact))) == \
        f"writing the artifacts of run {run} at {ro_artifacts} failed: read-only file system; make it writable, {RERUN}"


def test_errors_that_are_no_resource_are_left_alone():
    try:
        try:
            raise KeyError("x")
        except KeyError:
            raise RuntimeError("a bug") from None
    except RuntimeError as e:
        assert resources.find(e) is None
    denied = PermissionError(errno.EPERM, "Operation not permitted")  # no file: signalling a process, say
    assert resources.find(denied) is None


def test_quiet_covers_the_handlers_a_library_makes_after_it_opened():
    """The sweep enters quiet() before MLflow loads (its fold workers start first): MLflow's handlers,
    made as it loads, get the filter at ``logs.cover()``, and lose it when the block ends."""
    import errno

    seen = []

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    full = OSError(errno.ENOSPC, "No space left on device")
    logger, late = logging.getLogger("mlflow"), Collect()
    with logs.quiet() as silenced:
        logger.addHandler(late)  # what `import mlflow` does inside the block
        try:
            logger.error("before cover: %s", full)
            logs.cover()
            logger.error("after cover: %s", full)
            logger.error("no resource error")
        finally:
            logger.removeHandler(late)
    assert seen == ["before cover: [Errno 28] No space left on device", "no resource error"]
    assert silenced.dropped >= 1 and silenced.first is full and not late.filters
