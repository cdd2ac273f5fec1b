"""The study live in optuna-dashboard: the real dashboard on a sweep's own storage, read through its API."""

import contextlib
import json
import os
import shutil
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
from conftest import require, run_module
from mlflow.tracking import MlflowClient

TRIALS = 3


def _json(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def _sweep(env, trials, *options) -> str:
    """A small sweep's study name, after it ran to the end."""
    name = f"study-{uuid.uuid4().hex[:8]}"
    proc = run_module("legoexp.sweep", "--trials", trials, "--folds", "2", "--seeds", "2", "--epochs", "2", *options,
                      "--study-name", name, "--experiment-name", name, "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr
    assert not [line for line in proc.stderr.splitlines() if line.startswith(("trial ", "fit "))], proc.stderr
    return name


@contextlib.contextmanager
def _dashboard(journal: Path, log: Path):
    """The real optuna-dashboard on ``journal``, started as the README says, in the store's folder."""
    from services import background_service, free_port  # here: test modules load it as a plugin first

    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    require(dashboard.is_file() or shutil.which("optuna-dashboard") is not None,
            "optuna-dashboard is not installed (pip install -e '.[test]')")
    port = free_port()
    command = [str(dashboard) if dashboard.is_file() else "optuna-dashboard", journal.name,
               "--host", "127.0.0.1", "--port", str(port)]
    with background_service("optuna-dashboard", command, f"http://127.0.0.1:{port}", "/api/studies",
                            log, cwd=journal.parent, env=os.environ.copy()) as service:
        yield service


@pytest.mark.slow
def test_optuna_dashboard_on_the_default_journal_shows_the_study_its_trials_and_their_mlflow_runs(
        mlflow_env, tracking_uri, tmp_path):
    name = _sweep(mlflow_env, TRIALS)

    client = MlflowClient()
    experiment = client.get_experiment_by_name(name).experiment_id
    runs = client.search_runs([experiment])
    parent = next(r for r in runs if r.data.tags["legoexp.kind"] == "sweep")
    journal = Path(tracking_uri[len("sqlite:///"):]).parent / "optuna.journal"  # the default: beside the store
    assert parent.data.params["study_name"] == name and parent.data.params["storage"] == f"journal:{journal}"
    trial_runs = {r.data.tags["trial_number"]: r for r in runs if r.data.tags["legoexp.kind"] == "trial"}

    with _dashboard(journal, tmp_path / "dashboard.log") as service:
        summaries = _json(f"{service.url}/api/studies")["study_summaries"]
        [summary] = [s for s in summaries if s["study_name"] == name]
        assert summary["directions"] == ["maximize"]
        assert {a["key"]: a["value"] for a in summary["user_attrs"]}["mlflow_parent_run_id"] == parent.info.run_id
        study = _json(f"{service.url}/api/studies/{summary['study_id']}?after=0")

    assert study["name"] == name
    trials = study["trials"]
    assert [t["number"] for t in trials] == list(range(TRIALS))
    for trial in trials:
        run = trial_runs[str(trial["number"])]
        assert trial["state"] == {"complete": "Complete", "pruned": "Pruned"}[run.data.tags["state"]]
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        assert attrs["mlflow_run_id"] == run.info.run_id
        assert attrs["mlflow_run_url"] == f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/{run.info.run_id}"
        if trial["state"] == "Complete":
            assert trial["values"] == [pytest.approx(run.data.metrics["val_accuracy"])]


@pytest.mark.slow
def test_optuna_dashboard_shows_a_multi_objective_studys_pareto_front_and_its_metric_names(
        mlflow_env, tracking_uri, tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    name = _sweep(mlflow_env, "5", "--objectives", "accuracy,params")
    journal = Path(tracking_uri[len("sqlite:///"):]).parent / "optuna.journal"
    front = sorted(t.number for t in optuna.load_study(
        study_name=name, storage=JournalStorage(JournalFileBackend(str(journal)))).best_trials)

    with _dashboard(journal, tmp_path / "dashboard.log") as service:
        [summary] = [s for s in _json(f"{service.url}/api/studies")["study_summaries"] if s["study_name"] == name]
        assert summary["directions"] == ["maximize", "minimize"]
        study = _json(f"{service.url}/api/studies/{summary['study_id']}?after=0")
    assert study["objective_names"] == ["val_accuracy", "param_count"]  # from study.set_metric_names
    # the front the dashboard draws: the study's best trials, given by their ids
    ids = {t["trial_id"]: t["number"] for t in study["trials"]}
    assert sorted(ids[t["trial_id"]] for t in study["best_trials"]) == front
    assert all(len(t["values"]) == 2 for t in study["trials"] if t["state"] == "Complete")
