"""SIGTERM (what Kubernetes and Slurm send before SIGKILL) ends a command as Ctrl-C does, at once and cleanly.

Each test holds the command at a fault point (it stops itself there), sends the signal, lets it go on,
and looks at the study and the runs right away, with no rerun in between: nothing RUNNING, the trials
it held FAIL with the reason, their runs KILLED, one line on stderr and no traceback from any process.
A second signal is sent while the first is being handled, at the fault point inside the cleanup.
"""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from conftest import faults_env, held_at_fault, state
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

TINY = ["--folds", "2", "--seeds", "2", "--epochs", "4"]


def _sweep_args(name, trials=6):
    return [sys.executable, "-m", "legoexp.sweep", "--study-name", name, "--experiment-name", name,
            "--trials", str(trials), *TINY]


def _trials(tracking_uri, name):
    journal = Path(tracking_uri[len("sqlite:///"):]).parent / "optuna.journal"
    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(journal)))).get_trials()


def _runs(name):
    client = MlflowClient()
    return client.search_runs([client.get_experiment_by_name(name).experiment_id])


def _stopped_again(proc, pid: int, log: Path, point: str, timeout: float = 120) -> None:
    """Wait until ``pid`` has stopped itself at fault point ``point`` (its second stop)."""
    deadline = time.monotonic() + timeout
    while not (f"fault point {point}#1: stop" in log.read_text() and state(pid) == "T"):
        assert proc.poll() is None, f"ended (exit {proc.returncode}) before {point}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"not stopped at {point} after {timeout} s"
        time.sleep(0.05)


def _ended(proc, timeout: float = 120) -> float:
    """Seconds until ``proc`` exits."""
    started = time.monotonic()
    proc.wait(timeout=timeout)
    return time.monotonic() - started


def _terminated(proc, pid: int, log: Path, what: str, send=os.kill, held: int | None = None) -> str:
    """Send SIGTERM (with ``send``: to ``pid``, or its group), let the process held at its fault point
    (``held``, default ``pid``) go on, and return the command's stderr once it has exited 143 without a
    traceback; print how long it took."""
    send(pid, signal.SIGTERM)
    os.kill(held or pid, signal.SIGCONT)
    seconds = _ended(proc)
    print(f"SIGTERM to {what}: exited {proc.returncode} after {seconds:.2f} s")
    stderr = log.read_text()
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    return stderr


def _assert_nothing_running(tracking_uri, name, reason):
    trials = _trials(tracking_uri, name)
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and {t.user_attrs["fail_reason"] for t in failed} == {reason}
    runs = _runs(name)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    killed = [r for r in runs if r.data.tags.get("legoexp.kind") == "trial" and r.info.status == "KILLED"]
    assert sorted(r.data.tags["trial_number"] for r in killed) == sorted(str(t.number) for t in failed)
    assert {r.data.tags["fail_reason"] for r in killed} == {reason}
    return trials, runs


@pytest.mark.slow
@pytest.mark.parametrize("to", ["process", "group"])
def test_sigterm_ends_a_sweep_at_once_its_trials_failed_and_a_rerun_resumes(mlflow_env, tracking_uri, tmp_path, to):
    """``process``: Kubernetes signals the main process; ``group``: Slurm's scancel signals them all."""
    name, log = f"study-{uuid.uuid4().hex[:8]}", tmp_path / "stderr"
    with open(log, "w") as err:
        proc = subprocess.Popen(_sweep_args(name), env=faults_env(mlflow_env, "trial.fold#5=stop", tmp_path / "held"),
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    pid = held_at_fault(proc, tmp_path / "held")
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    stderr = _terminated(proc, pid, log, f"the sweep's {to}", os.killpg if to == "group" else os.kill)
    assert stderr.strip().splitlines()[-1] == ("terminated (SIGTERM) with 2 finished trial(s); rerun the same "
                                               "command to resume")
    trials, runs = _assert_nothing_running(tracking_uri, name, "terminated")
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [2, 3]  # the one scored, the one started
    assert [r.info.status for r in runs if r.data.tags["legoexp.kind"] == "sweep"] == ["KILLED"]
    assert not any(state(int(c)) not in (None, "Z") for c in children)  # the fold processes are gone

    again = subprocess.run(_sweep_args(name), env=mlflow_env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    finished = [t for t in _trials(tracking_uri, name) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 6


@pytest.mark.slow
def test_sigterm_while_a_trials_run_is_being_made_ends_that_run_too(mlflow_env, tracking_uri, tmp_path):
    """The signal lands after the store has the run and before its id is back (held at trial.run_made,
    the second trial's): the run is found by its trial and ended KILLED, not left RUNNING."""
    name, log = f"study-{uuid.uuid4().hex[:8]}", tmp_path / "stderr"
    with open(log, "w") as err:
        proc = subprocess.Popen(_sweep_args(name), env=faults_env(mlflow_env, "trial.run_made#2=stop",
                                                                   tmp_path / "held"),
                                stdout=subprocess.DEVNULL, stderr=err)
    pid = held_at_fault(proc, tmp_path / "held")
    _terminated(proc, pid, log, "the sweep making a trial's run")
    trials, runs = _assert_nothing_running(tracking_uri, name, "terminated")
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [0, 1]  # the current one, the one made


@pytest.mark.slow
@pytest.mark.parametrize("first, second", [(signal.SIGTERM, signal.SIGINT), (signal.SIGINT, signal.SIGINT)])
def test_a_second_signal_while_the_first_is_handled_leaves_nothing_half_ended(mlflow_env, tracking_uri, tmp_path,
                                                                              first, second):
    """Both to the whole process group, as a terminal's Ctrl-C is: the fold processes print nothing."""
    name, log = f"study-{uuid.uuid4().hex[:8]}", tmp_path / "stderr"
    plan = "trial.fold#5=stop;trial.abandon=stop"
    with open(log, "w") as err:
        proc = subprocess.Popen(_sweep_args(name), env=faults_env(mlflow_env, plan, tmp_path / "held"),
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    pid = held_at_fault(proc, tmp_path / "held")
    os.killpg(pid, first)
    os.kill(pid, signal.SIGCONT)
    _stopped_again(proc, pid, log, "trial.abandon")  # ending its first trial, because of the first signal
    os.killpg(pid, second)
    os.kill(pid, signal.SIGCONT)
    _ended(proc)
    stderr = log.read_text()
    assert proc.returncode == (143 if first == signal.SIGTERM else 130), stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    how = "terminated (SIGTERM)" if first == signal.SIGTERM else "interrupted"
    assert stderr.strip().splitlines()[-1] == f"{how} with 2 finished trial(s); rerun the same command to resume"
    _assert_nothing_running(tracking_uri, name, "terminated" if first == signal.SIGTERM else "interrupted")


@pytest.mark.slow
def test_sigterm_ends_a_worker_its_trials_failed_and_the_parent_left_to_its_sweep(mlflow_env, tracking_uri, tmp_path):
    name, log = f"study-{uuid.uuid4().hex[:8]}", tmp_path / "stderr"
    main = subprocess.run(_sweep_args(name, trials=2), env=mlflow_env, capture_output=True, text=True, timeout=600)
    assert main.returncode == 0, main.stderr
    with open(log, "w") as err:
        proc = subprocess.Popen([*_sweep_args(name), "--worker"], stdout=subprocess.DEVNULL, stderr=err,
                                env=faults_env(mlflow_env, "trial.fold#3=stop", tmp_path / "held"))
    pid = held_at_fault(proc, tmp_path / "held")
    stderr = _terminated(proc, pid, log, "a worker")
    assert stderr.strip().splitlines()[-1] == "terminated (SIGTERM)"
    _, runs = _assert_nothing_running(tracking_uri, name, "terminated")
    assert [r.info.status for r in runs if r.data.tags["legoexp.kind"] == "sweep"] == ["FINISHED"]


@pytest.mark.slow
def test_sigterm_ends_a_baseline_run_killed(mlflow_env, tmp_path):
    name, once = f"test-{uuid.uuid4().hex[:8]}", tmp_path / "held"
    proc = subprocess.Popen([sys.executable, "-m", "legoexp.baseline", "--epochs", "2", "--experiment-name", name],
                            env=faults_env(mlflow_env, "baseline.model=stop", once), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    pid = held_at_fault(proc, once, timeout=120)
    os.kill(pid, signal.SIGTERM)
    os.kill(pid, signal.SIGCONT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "terminated (SIGTERM)"
    assert [r.info.status for r in _runs(name)] == ["KILLED"]


def test_sigterm_before_any_work_exits_143_in_one_line(mlflow_env):
    proc = subprocess.Popen([sys.executable, "-c", "import os, signal; from legoexp.ops.command import run_main; "
                             "run_main(lambda argv: os.kill(os.getpid(), signal.SIGTERM))"],
                            env=mlflow_env, stderr=subprocess.PIPE, text=True)
    _, stderr = proc.communicate(timeout=60)
    assert (proc.returncode, stderr) == (143, "terminated (SIGTERM)\n")


@pytest.mark.slow
def test_sigterm_while_the_comparison_is_logged_ends_it_killed_and_a_rerun_registers(mlflow_env, tracking_uri,
                                                                                    tmp_path):
    name, log, once = f"study-{uuid.uuid4().hex[:8]}", tmp_path / "stderr", tmp_path / "held"
    with open(log, "w") as err:
        proc = subprocess.Popen([*_sweep_args(name, trials=3), "--model-name", name], stdout=subprocess.DEVNULL,
                                stderr=err, env=faults_env(mlflow_env, "report.model_logged=stop", once))
    pid = held_at_fault(proc, once)
    stderr = _terminated(proc, pid, log, "a sweep logging its comparison")
    assert stderr.strip().splitlines()[-1] == "terminated (SIGTERM) with 3 finished trial(s); rerun the same " \
                                              "command to resume"
    runs = {r.data.tags["legoexp.kind"]: r.info.status for r in _runs(name) if r.data.tags["legoexp.kind"] != "trial"}
    assert runs == {"sweep": "KILLED", "rescoring": "FINISHED", "comparison": "KILLED"}  # re-scored before
    assert MlflowClient().search_registered_models(f"name = '{name}'") == []  # nothing registered yet

    again = subprocess.run([*_sweep_args(name, trials=3), "--model-name", name], env=mlflow_env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert MlflowClient().get_registered_model(name).aliases.keys() == {"challenger", "baseline"}
    assert not [r for r in _runs(name) if r.info.status == "RUNNING"]
