"""`python -m legoexp.reproduce RUN_ID`, on runs that real baseline and sweep commands logged."""

import os
import uuid

import numpy as np
import pytest
from conftest import run_module
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from legoexp.data import load_split, open_source


def _one_line_error(proc, message):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert message in proc.stderr


def _runs(experiment_name, kind):
    client = MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name)
    return client.search_runs([experiment.experiment_id], f"tags.`legoexp.kind` = '{kind}'")


def _baseline(env, *args):
    name = f"reproduce-{uuid.uuid4().hex[:8]}"
    proc = run_module("legoexp.baseline", "--experiment-name", name, *args, env=env)
    assert proc.returncode == 0, proc.stderr
    (run,) = _runs(name, "baseline")
    return run


def _copy_with_changed_test_accuracy(run) -> str:
    """A run holding the same params and metrics as ``run`` except one more right test image."""
    client = MlflowClient()
    copy = client.create_run(run.info.experiment_id, run_name="tampered", tags={"legoexp.kind": "baseline"})
    metrics = [Metric(m.key, m.value, m.timestamp, m.step)
               for key in run.data.metrics for m in client.get_metric_history(run.info.run_id, key)]
    metrics = [m if m.key != "test_accuracy" else Metric(m.key, m.value + 1 / 150, m.timestamp, m.step)
               for m in metrics]
    client.log_batch(copy.info.run_id, metrics=metrics,
                     params=[Param(k, v) for k, v in run.data.params.items()])
    client.set_terminated(copy.info.run_id)
    return copy.info.run_id


@pytest.mark.slow
def test_a_fresh_baseline_run_reproduces_identical_and_a_changed_metric_is_different(mlflow_env):
    run = _baseline(mlflow_env, "--epochs", "2")
    proc = run_module("legoexp.reproduce", run.info.run_id, env=mlflow_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "IDENTICAL: all 6 logged values reproduced exactly"
    by_name = run_module("legoexp.reproduce", run.info.run_name, env=mlflow_env)  # the latest run of that name
    assert by_name.stdout == proc.stdout and f"baseline run {run.info.run_id} (" in by_name.stderr
    compared = [line.split()[0] for line in lines if line.endswith("IDENTICAL")]
    assert compared == ["train_loss"] * 2 + ["train_accuracy"] * 2 + ["test_loss", "test_accuracy"]
    assert repr(run.data.metrics["test_accuracy"]) in proc.stdout

    tampered = _copy_with_changed_test_accuracy(run)
    proc = run_module("legoexp.reproduce", tampered, env=mlflow_env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    different = [line for line in proc.stdout.splitlines() if line.endswith("DIFFERENT")]
    assert len(different) == 1 and different[0].startswith("test_accuracy")
    assert proc.stdout.strip().endswith("DIFFERENT: 1 of 6 logged values differ")


@pytest.mark.slow
def test_a_sweep_trial_run_reproduces_its_fold_accuracies_identical(mlflow_env):
    name = f"reproduce-{uuid.uuid4().hex[:8]}"
    proc = run_module("legoexp.sweep", "--trials", "1", "--folds", "2", "--seeds", "2", "--epochs", "1",
                      "--study-name", name, "--experiment-name", name, "--model-name", name, env=mlflow_env)
    assert proc.returncode == 0, proc.stderr
    (trial,) = _runs(name, "trial")
    proc = run_module("legoexp.reproduce", trial.info.run_id, env=mlflow_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    compared = [line.split()[0] for line in proc.stdout.splitlines() if line.endswith("IDENTICAL")]
    assert compared == ["val_accuracy_fold0", "val_accuracy_fold1", "val_accuracy"]


@pytest.mark.slow
def test_a_run_whose_data_changed_since_is_refused(mlflow_env, tmp_path):
    data = tmp_path / "lego-npz"
    data.mkdir()
    source = open_source("synthetic")
    for split in ("train", "test"):
        s = load_split(source, split)
        np.savez(data / f"{split}.npz", images=s.images, labels=s.labels)
    run = _baseline(mlflow_env, "--data", data, "--epochs", "1")

    train = load_split(open_source(str(data)), "train")
    images = train.images.copy()
    images[0, 0, 0] ^= 1  # one pixel of one image
    np.savez(data / "train.npz", images=images, labels=train.labels)
    proc = run_module("legoexp.reproduce", run.info.run_id, env=mlflow_env)
    _one_line_error(proc, f"{data.resolve() / 'train.npz'}: the train split now has digest ")
    assert f"but run {run.info.run_id} logged {train.digest}; the data changed since the run" in proc.stderr
    assert proc.stdout == ""


def test_an_unknown_run_id_is_one_line_exit_2(mlflow_env):
    MlflowClient().search_experiments()  # the store exists (creating it is what a first run does)
    proc = run_module("legoexp.reproduce", "0123456789abcdef0123456789abcdef", env=mlflow_env)
    _one_line_error(proc, "run 0123456789abcdef0123456789abcdef: not found in the tracking store sqlite:///")
    proc = run_module("legoexp.reproduce", "no-such-run", env=mlflow_env)
    _one_line_error(proc, "run no-such-run: not found in the tracking store sqlite:///")
    assert proc.stderr.rstrip().endswith("; expected a run id or a run's name")


def test_a_run_that_is_not_a_baseline_or_trial_is_refused(mlflow_env):
    client = MlflowClient()
    run = client.create_run(client.create_experiment(f"reproduce-{uuid.uuid4().hex[:8]}"), run_name="notes")
    proc = run_module("legoexp.reproduce", run.info.run_id, env=mlflow_env)
    _one_line_error(proc, f"run {run.info.run_id} (notes) is not a legoexp run; expected a baseline run")


def test_a_missing_tracking_store_is_refused_not_created(tmp_path):
    store = tmp_path / "mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    proc = run_module("legoexp.reproduce", "0123456789abcdef0123456789abcdef", env=env)
    _one_line_error(proc, f"there is no tracking store at sqlite:///{store}")
    assert not store.exists()
