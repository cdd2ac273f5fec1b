"""Many workers, one study: `--jobs` on a real PostgreSQL storage and a real `mlflow server`."""

import os
import signal
import subprocess
import sys
import time
import uuid

import optuna
import pytest
from conftest import faults_env, held_at_fault
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

pytest_plugins = ["services"]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _command(study, postgres_url, trials, *extra):
    return [sys.executable, "-m", "legoexp.sweep", "--study-name", study, "--experiment-name", study,
            "--storage", postgres_url, "--trials", str(trials), "--folds", "2", "--seeds", "2", *extra]


def _env(mlflow_server, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}
    env.pop("MLFLOW_RUN_ID", None)
    return env


def _trials(postgres_url, study):
    return optuna.load_study(study_name=study, storage=postgres_url).get_trials()


def _runs(mlflow_server, study):
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name(study)
    return client.search_runs([experiment.experiment_id])


def _wait_for(predicate, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            found = predicate()
        except (KeyError, Exception):  # the study may not exist yet
            found = None
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError("timed out waiting")


def _assert_complete(postgres_url, mlflow_server, study, trials):
    done = _trials(postgres_url, study)
    assert len([t for t in done if t.state in FINISHED]) == trials
    assert [t.number for t in done] == list(range(len(done)))  # no trial numbered twice
    assert not any(t.state == TrialState.RUNNING for t in done)
    runs = _runs(mlflow_server, study)
    assert not any(r.info.status == "RUNNING" for r in runs)
    parents = [r for r in runs if r.data.tags.get("legoexp.kind") == "sweep"]
    assert len(parents) == 1
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in runs if r is not parents[0])
    return done, runs


@pytest.mark.slow
def test_workers_share_a_postgres_study_and_survive_a_kill_9(postgres_url, mlflow_server, tmp_path):
    study = f"pg-{uuid.uuid4().hex[:8]}"
    main = subprocess.Popen(_command(study, postgres_url, 6, "--jobs", "2", "--epochs", "4"),
                            env=faults_env(_env(mlflow_server, tmp_path), "trial.fold=stop", tmp_path / "held"),
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    held = held_at_fault(main, tmp_path / "held")  # a worker, after its first fold report
    assert held != main.pid
    # the trial it reports on, and the next one it has claimed already (unless the study was full)
    lost = [t.number for t in _trials(postgres_url, study)
            if t.state == TrialState.RUNNING and t.user_attrs["owner"].split(":")[1] == str(held)]
    assert 1 <= len(lost) <= 2
    os.kill(held, signal.SIGKILL)
    out, err = main.communicate(timeout=600)
    assert main.returncode == 0, err
    done, runs = _assert_complete(postgres_url, mlflow_server, study, 6)
    assert len({t.user_attrs["owner"] for t in done}) >= 2
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert sorted(int(r.data.tags["trial_number"]) for r in killed) == lost
    assert {r.data.tags["fail_reason"] for r in killed} == {"its process died"}
    assert any(r.data.tags.get("legoexp.kind") == "comparison" for r in runs)


@pytest.mark.slow
def test_postgres_restarted_mid_sweep_then_a_rerun_completes_the_study(postgres, postgres_url, mlflow_server,
                                                                        tmp_path):
    study = f"pg-{uuid.uuid4().hex[:8]}"
    command = _command(study, postgres_url, 6, "--jobs", "2", "--epochs", "3")
    env = _env(mlflow_server, tmp_path)
    main = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for(lambda: sum(t.state in FINISHED for t in _trials(postgres_url, study)) >= 1)
    with postgres.stopped():
        time.sleep(3)
    out, err = main.communicate(timeout=600)
    if main.returncode != 0:  # it may ride it out; if not, it says so in one line
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: ") and "rerun the same command to resume" in last, err[-3000:]
        rerun = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
    _assert_complete(postgres_url, mlflow_server, study, 6)


@pytest.mark.slow
def test_identical_sweeps_started_together_on_a_fresh_database_share_one_study(postgres, mlflow_server, tmp_path):
    """Pods of one Job: the same command, started at the same instant, on a database with no schema yet."""
    study = f"pg-{uuid.uuid4().hex[:8]}"
    url = postgres.create_database(study.replace("-", "_"))
    command = _command(study, url, 5, "--epochs", "2", "--model-name", f"lego-{study}")
    env = _env(mlflow_server, tmp_path)
    procs = [subprocess.Popen([*command, *extra], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for extra in ([], [], ["--worker"])]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    done, runs = _assert_complete(url, mlflow_server, study, 5)
    assert len({t.user_attrs["owner"] for t in done}) >= 2
    assert [r.info.status for r in runs if r.data.tags["legoexp.kind"] == "sweep"] == ["FINISHED"]
    assert [r.info.status for r in runs if r.data.tags["legoexp.kind"] == "comparison"] == ["FINISHED"]
    versions = MlflowClient(tracking_uri=mlflow_server).search_model_versions(f"name = 'lego-{study}'")
    assert sorted(v.tags["role"] for v in versions) == ["baseline", "best"]  # compared and registered once
    assert sum("nothing left to do" in err for _, err in outputs) == 1  # the other main sweep


@pytest.mark.slow
def test_a_tracking_store_that_fails_is_one_line_not_absent_and_changes_nothing(postgres, mlflow_server, tmp_path):
    study = f"pg-{uuid.uuid4().hex[:8]}"
    model = f"lego-{study}"
    storage = f"journal:{tmp_path / 'optuna.journal'}"
    command = _command(study, storage, 2, "--epochs", "2", "--model-name", model)
    env = {**_env(mlflow_server, tmp_path), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    first = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    client = MlflowClient(tracking_uri=mlflow_server)
    before = sorted((r.info.run_id, r.info.status) for r in _runs(mlflow_server, study))
    aliases = client.get_registered_model(model).aliases
    with postgres.stopped():  # the tracking server is up, its database is not: every call fails with a 5xx
        again = subprocess.run(_command(study, storage, 3, "--epochs", "2", "--model-name", model), env=env,
                               cwd=tmp_path, capture_output=True, text=True, timeout=600)
        looked_up = subprocess.run([sys.executable, "-c", f"from legoexp import registry; "
                                    f"print(registry.alias_version({model!r}, 'baseline'))"],
                                   env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2, again.stderr[-3000:]
    last = again.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: the tracking store {mlflow_server} failed (") and "Traceback" not in again.stderr
    assert last.endswith("rerun the same command to resume")
    assert looked_up.returncode != 0 and "None" not in looked_up.stdout  # a failure, not "no such alias"
    assert sorted((r.info.run_id, r.info.status) for r in _runs(mlflow_server, study)) == before
    assert client.get_registered_model(model).aliases == aliases
