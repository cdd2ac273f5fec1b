"""The real services the scale-out tests stand on: PostgreSQL shared by processes, an MLflow tracking
server that stores runs in it and serves artifacts, and a restart of the database mid-test."""

import json
import subprocess
import sys
import textwrap

import optuna
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

pytest_plugins = ["services"]
pytestmark = pytest.mark.slow


def python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 120) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return out


ADD_TRIALS = """
    import sys, optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=sys.argv[2], storage=sys.argv[1])
    study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=int(sys.argv[3]))
"""


def test_two_processes_add_their_trials_to_one_study_in_postgres(postgres_url):
    study = optuna.create_study(study_name="two-processes", storage=optuna.storages.RDBStorage(postgres_url))

    workers = [python(ADD_TRIALS, postgres_url, "two-processes", "6") for _ in range(2)]
    for worker in workers:
        finish(worker)

    trials = study.get_trials()
    assert len(trials) == 12
    assert sorted(t.number for t in trials) == list(range(12))
    assert all(t.state == TrialState.COMPLETE for t in trials)


READ_RUN = """
    import json, sys
    from mlflow.tracking import MlflowClient
    client = MlflowClient(sys.argv[1])
    run = client.get_run(sys.argv[2])
    path = client.download_artifacts(sys.argv[2], "notes/hello.txt", sys.argv[3])
    print(json.dumps({"status": run.info.status, "params": run.data.params, "metrics": run.data.metrics,
                      "artifact": open(path).read()}))
"""


def test_a_run_logged_through_the_server_reads_back_in_another_process(mlflow_server, tmp_path):
    client = MlflowClient(mlflow_server)
    experiment_id = client.create_experiment("services-roundtrip")
    run_id = client.create_run(experiment_id).info.run_id
    client.log_batch(run_id, params=[Param("lr", "0.04"), Param("hidden1", "128")],
                     metrics=[Metric("val_accuracy", 0.93, 0, 0), Metric("val_accuracy_fold0", 0.9, 0, 0)])
    (tmp_path / "hello.txt").write_text("a small artifact\n")
    client.log_artifact(run_id, str(tmp_path / "hello.txt"), "notes")
    client.set_terminated(run_id, "FINISHED")
    download = tmp_path / "download"
    download.mkdir()

    seen = json.loads(finish(python(READ_RUN, mlflow_server, run_id, str(download))))

    assert client.get_experiment(experiment_id).artifact_location.startswith("mlflow-artifacts:/")
    assert seen == {"status": "FINISHED", "params": {"lr": "0.04", "hidden1": "128"},
                    "metrics": {"val_accuracy": 0.93, "val_accuracy_fold0": 0.9},
                    "artifact": "a small artifact\n"}


def test_storage_and_server_work_again_after_postgres_restarts(postgres, mlflow_server):
    import sqlalchemy.exc

    plain = optuna.storages.RDBStorage(postgres.url)
    pinged = optuna.storages.RDBStorage(postgres.url, engine_kwargs={"pool_pre_ping": True})
    study = optuna.create_study(study_name="restart", storage=plain)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    study_id = study._study_id
    assert len(pinged.get_all_trials(study_id)) == 1  # both pools now hold a connection
    client = MlflowClient(mlflow_server)
    experiment_id = client.create_experiment("services-restart")

    with postgres.stopped():
        assert not postgres.running
        with pytest.raises(optuna.exceptions.StorageInternalError) as down:  # Optuna's message blames
            pinged.get_all_trials(study_id)                                   # "invalid data"; the cause
        assert isinstance(down.value.__cause__, sqlalchemy.exc.OperationalError)  # says what happened
    assert postgres.running

    # a pool without pre-ping hands out the connection that died with the restart once; then reconnects
    with pytest.raises(optuna.exceptions.StorageInternalError):
        plain.get_all_trials(study_id)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    # with pre-ping (which MLflow's server uses too) a restart goes unnoticed
    assert [t.state for t in pinged.get_all_trials(study_id)] == [TrialState.COMPLETE] * 2
    run_id = client.create_run(experiment_id).info.run_id
    client.set_terminated(run_id, "FINISHED")
    assert client.get_run(run_id).info.status == "FINISHED"
