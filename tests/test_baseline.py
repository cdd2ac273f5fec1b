"""`python -m legoexp.baseline` and `mlflow run . -e baseline`, end to end on real MLflow stores."""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, faults_env, held_at_fault, run_module, state
from mlflow.tracking import MlflowClient

from legoexp.data import load_split, open_source

PLOTS = {"training_images", "learning_curves", "single_prediction", "batch_prediction", "confusion_matrix"}


def _runs(experiment_name: str):
    client = MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name)
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def _baseline(env, *args):
    name = f"test-{uuid.uuid4().hex[:8]}"
    proc = run_module("legoexp.baseline", "--experiment-name", name, *args, env=env)
    return proc, name


def _history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


@pytest.mark.slow
def test_baseline_on_the_lab_files_logs_everything_and_is_reproducible(lab_dir, mlflow_env):
    proc, name = _baseline(mlflow_env, "--data", lab_dir)
    assert proc.returncode == 0, proc.stderr
    assert "test_accuracy" in proc.stdout and "mlflow ui --backend-store-uri" in proc.stdout
    again, name2 = _baseline(mlflow_env, "--data", lab_dir)
    assert again.returncode == 0, again.stderr
    (run,), (run2,) = _runs(name), _runs(name2)
    client = MlflowClient()

    assert run.info.status == "FINISHED" and run.info.run_name == "baseline-seed42"
    train = load_split(open_source(str(lab_dir)), "train")
    test = load_split(open_source(str(lab_dir)), "test")
    assert run.data.params == {
        "data": str(lab_dir), "epochs": "10", "lr": "0.04", "batch_size": "34", "hidden1": "128",
        "hidden2": "64", "seed": "42", "data_source": str(lab_dir.resolve()), "data_digest": train.digest}
    for key in ("train_loss", "train_accuracy"):
        history = _history(client, run.info.run_id, key)
        assert [step for step, _ in history] == list(range(1, 11))
        assert history == _history(client, run2.info.run_id, key)  # same seed, same numbers
    assert run.data.metrics["test_accuracy"] >= 0.95
    scores = {k: v for k, v in run.data.metrics.items() if k in ("train_loss", "train_accuracy", "test_loss",
                                                                "test_accuracy")}
    assert len(scores) == 4 and scores == {k: run2.data.metrics[k] for k in scores}

    # where the seconds went: parts of the main process's wall time that add up, and the chart process's own
    times = {k: v for k, v in run.data.metrics.items() if k.startswith("time_") and k != "time_total_s"}
    assert set(times) == {f"time_{p}_s" for p in ("startup", "fit_training", "fit_bookkeeping", "setup", "model",
                                                   "charts", "rest")}
    assert min(times.values()) >= 0 and times["time_fit_training_s"] > 0
    assert run.data.metrics["time_total_s"] == pytest.approx(sum(times.values()))
    assert 0 < run.data.metrics["chart_process_s"] < run.data.metrics["time_total_s"]

    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {f"plots/{p}.png" for p in PLOTS}
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert inputs["lego-train"].dataset.digest == train.digest
    assert inputs["lego-test"].dataset.digest == test.digest
    assert {t.value for d in inputs.values() for t in d.tags} == {"training", "testing"}
    assert "lego-simple-mx-train" in inputs["lego-train"].dataset.source

    # the logged model, loaded in a fresh process, predicts the test set with the logged accuracy
    model_uri = client.search_logged_models([run.info.experiment_id])[0].model_uri
    code = (
        "import sys, json, mlflow, numpy as np\n"
        "from legoexp.data import load_split, open_source\n"
        f"test = load_split(open_source({str(lab_dir)!r}), 'test')\n"
        f"model = mlflow.pyfunc.load_model({model_uri!r})\n"
        "out = model.predict(test.images[..., None])\n"
        "print(json.dumps({'acc': float((out['label'].to_numpy() == test.labels).mean()),\n"
        "  'names': out['class_name'].tolist()[:3], 'sums': [float(sum(p)) for p in out['probabilities']]}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=mlflow_env)
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert answer["acc"] == pytest.approx(run.data.metrics["test_accuracy"])
    assert np.allclose(answer["sums"], 1.0)
    from legoexp.classes import CLASS_NAMES
    assert set(answer["names"]) <= set(CLASS_NAMES)


def _evil_dir(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(tmp_path / 'marker')!r}, 'w').close()",))

    for name in ("lego-simple-mx-train", "lego-simple-mx-test"):
        (tmp_path / name).write_bytes(pickle.dumps(Evil()))
    return tmp_path


def _bad_npz_dir(tmp_path):
    np.savez(tmp_path / "train.npz", images=np.zeros((5, 48, 48), np.uint8), labels=np.array([0, 1, 2, 3, 12]))
    np.savez(tmp_path / "test.npz", images=np.zeros((5, 48, 48), np.uint8), labels=np.zeros(5, int))
    return tmp_path


@pytest.mark.parametrize("make_args, message", [
    (lambda t: ["--data", t / "missing"], "no such directory"),
    (lambda t: ["--data", _evil_dir(t)], "refused to load global builtins.exec"),
    (lambda t: ["--data", _bad_npz_dir(t)], "train.npz: labels range 0..12; expected integers 0..9"),
    (lambda t: ["--epochs", "0"], "epochs=0; expected an integer 1..10000"),
    (lambda t: ["--config", t / "nope.yaml"], "nope.yaml: cannot read"),
])
def test_bad_input_is_one_line_exit_2_and_no_run(tmp_path, mlflow_env, make_args, message):
    proc, name = _baseline(mlflow_env, *make_args(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")
    assert message in proc.stderr
    assert _runs(name) == []
    assert not (tmp_path / "marker").exists()


@pytest.mark.slow
def test_a_diverging_run_ends_failed_with_the_reason(mlflow_env):
    proc, name = _baseline(mlflow_env, "--lr", "10000", "--epochs", "3")
    assert proc.returncode == 2
    assert "training loss became nan" in proc.stderr and "smaller --lr" in proc.stderr
    (run,) = _runs(name)
    assert run.info.status == "FAILED"


@pytest.mark.slow
def test_mlflow_run_baseline_entry_point_works_and_fails_cleanly(tmp_path, mlflow_env):
    project = tmp_path / "project"  # a copy, so the checkout gets no mlruns or mlflow.db
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns(".git", ".venv", "*.db", "mlruns", "mlartifacts"))
    mlflow_cli = [sys.executable, "-m", "mlflow", "run", str(project), "-e", "baseline", "--env-manager", "local"]
    name = f"test-{uuid.uuid4().hex[:8]}"
    # `mlflow run --env-manager local` runs `python` from PATH: make it this environment's, as an
    # activated virtualenv does for a user
    mlflow_env = {**mlflow_env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{mlflow_env['PATH']}"}
    ok = subprocess.run([*mlflow_cli, "--experiment-name", name, "-P", "epochs=2"],
                        capture_output=True, text=True, env=mlflow_env, timeout=300)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([*mlflow_cli, "--experiment-name", name, "-P", "data=/no/such/dir"],
                         capture_output=True, text=True, env=mlflow_env, timeout=300)
    assert bad.returncode != 0
    assert "error: data='/no/such/dir': no such directory" in bad.stderr
    runs = _runs(name)
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]  # nothing left RUNNING
    finished = next(r for r in runs if r.info.status == "FINISHED")
    assert finished.data.params["epochs"] == "2" and finished.info.run_name == "baseline-seed42"


@pytest.mark.slow
def test_mlflow_run_reads_conf_and_an_experiment_file_as_python_m_does(tmp_path, mlflow_env, generated_lab_dir):
    project = tmp_path / "project"
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns(".git", ".venv", "*.db", "mlruns", "mlartifacts"))
    conf = project / "conf" / "baseline.yaml"
    conf.write_text(conf.read_text().replace("epochs: 10", "epochs: 3"))
    experiment = project / "experiments" / "lab_baseline.yaml"
    experiment.write_text(f"data: {generated_lab_dir}\nepochs: 2\n")
    mlflow_cli = [sys.executable, "-m", "mlflow", "run", str(project), "-e", "baseline", "--env-manager", "local"]
    name = f"test-{uuid.uuid4().hex[:8]}"
    mlflow_env = {**mlflow_env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{mlflow_env['PATH']}",
                  "PYTHONPATH": str(project)}  # the copy's code reads the copy's conf/
    for params in ([], ["-P", "config=experiments/lab_baseline.yaml", "-P", "batch_size=17"]):
        proc = subprocess.run([*mlflow_cli, "--experiment-name", name, *params], capture_output=True, text=True,
                              env=mlflow_env, cwd=project, timeout=300)
        assert proc.returncode == 0, proc.stderr
    from_conf, from_file = sorted(_runs(name), key=lambda r: r.info.start_time)
    assert from_conf.data.params["epochs"] == "3" and from_conf.data.params["data"] == "synthetic"
    assert from_file.data.params["epochs"] == "2" and from_file.data.params["batch_size"] == "17"
    assert from_file.data.params["data_source"] == str(generated_lab_dir)
    history = MlflowClient().get_metric_history(from_conf.info.run_id, "train_loss")
    assert [m.step for m in history] == [1, 2, 3]


@pytest.mark.slow
def test_a_baseline_killed_outright_leaves_no_chart_process(tmp_path, mlflow_env):
    once = tmp_path / "held"
    proc = subprocess.Popen([sys.executable, "-m", "legoexp.baseline", "--epochs", "2", "--experiment-name",
                             f"test-{uuid.uuid4().hex[:8]}"], env=faults_env(mlflow_env, "baseline.model=stop", once),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid = held_at_fault(proc, once, timeout=120)
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()  # MLflow's `git cat-file` too
    (chart_process,) = [int(c) for c in children if b"legoexp.baseline" in Path(f"/proc/{c}/cmdline").read_bytes()]
    os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while state(chart_process) not in (None, "Z") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state(chart_process) in (None, "Z")
