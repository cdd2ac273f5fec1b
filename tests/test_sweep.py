"""`python -m legoexp.sweep`: real Optuna, real MLflow on temporary stores, generated data, few epochs."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import faults_env, held_at_fault, run_module
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

TINY = ["--folds", "2", "--seeds", "2", "--epochs", "2"]


def _sweep(env, *args, study=None, timeout=600):
    study = study or f"study-{uuid.uuid4().hex[:8]}"
    proc = run_module("legoexp.sweep", "--study-name", study, "--experiment-name", study, *args,
                      env=env, timeout=timeout)
    return proc, study


def _study(env_dir, name):
    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(env_dir / "optuna.journal"))))


def _runs(name):
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def _running(pid) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _store_dir(tracking_uri):
    return Path(tracking_uri[len("sqlite:///"):]).parent


@pytest.mark.slow
def test_a_small_sweep_logs_parent_trials_comparison_and_registers(mlflow_env, tracking_uri):
    proc, name = _sweep(mlflow_env, "--trials", "4", *TINY, "--model-name", "lego-small")
    assert proc.returncode == 0, proc.stderr
    assert "paired t-test" in proc.stdout and "@challenger" in proc.stdout

    runs = _runs(name)
    kinds = sorted(r.data.tags["legoexp.kind"] for r in runs)
    assert kinds == ["comparison", "rescoring", "sweep", "trial", "trial", "trial", "trial"]
    assert all(r.info.status != "RUNNING" for r in runs)
    parent = next(r for r in runs if r.data.tags["legoexp.kind"] == "sweep")
    children = [r for r in runs if r is not parent]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    trials = sorted((r for r in runs if r.data.tags["legoexp.kind"] == "trial"),
                    key=lambda r: int(r.data.params["trial_number"]))
    assert [r.info.run_name for r in trials] == ["trial-000", "trial-001", "trial-002", "trial-003"]
    first = trials[0].data.params  # the lab's baseline is trial 0
    assert (first["hidden1"], first["hidden2"], first["lr"], first["batch_size"]) == ("128", "64", "0.04", "34")
    for r in trials:
        assert {"hidden1", "hidden2", "lr", "batch_size", "epochs", "seed", "data_digest"} <= set(r.data.params)
        assert r.data.tags["state"] in {"complete", "pruned"}
        if r.data.tags["state"] == "complete":
            folds = [r.data.metrics[f"val_accuracy_fold{k}"] for k in range(2)]
            assert r.data.metrics["val_accuracy"] == pytest.approx(np.mean(folds))
    client = MlflowClient()
    parent_plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/optimization_history.png", "plots/param_importances.png", "plots/parallel_coordinate.png",
            "plots/slice.png", "plots/expected_best_val_accuracy.png"} <= parent_plots
    assert "val_accuracy" in parent.data.metrics and "best_hidden1" in parent.data.tags
    assert {"time_startup_s", "time_search_training_s", "time_models_s", "time_total_s", "overhead_share"} \
        <= set(parent.data.metrics)  # where the sweep's seconds went
    assert parent.data.metrics["cpu_main_s"] > 0 and parent.data.metrics["cpu_training_s"] > 0  # and its CPU

    comparison = next(r for r in runs if r.data.tags["legoexp.kind"] == "comparison")
    assert comparison.data.tags["test"] == "paired t-test"
    assert {"diff_mean", "diff_ci_low", "diff_ci_high", "p_value", "best_test_accuracy_mean"} <= set(comparison.data.metrics)
    assert len(client.get_metric_history(comparison.info.run_id, "best_test_accuracy")) == 2

    challenger = client.get_model_version_by_alias("lego-small", "challenger")
    assert challenger.tags["comparison_run_id"] == comparison.info.run_id
    assert challenger.tags["study_name"] == name and "val_accuracy" in challenger.tags
    assert {"hidden1", "hidden2", "lr", "batch_size", "epochs", "data_source", "data_digest"} <= set(challenger.tags)
    assert client.get_model_version_by_alias("lego-small", "baseline").version != challenger.version
    import mlflow

    from legoexp.data import load_split, open_source

    test = load_split(open_source("synthetic"), "test")
    out = mlflow.pyfunc.load_model("models:/lego-small@challenger").predict(test.images[:5])
    assert len(out) == 5 and set(out.columns) == {"label", "class_name", "probabilities"}

    again, _ = _sweep(mlflow_env, "--trials", "4", *TINY, "--model-name", "lego-small", study=name)
    assert again.returncode == 0, again.stderr
    assert "nothing left to do" in again.stderr
    assert len(_runs(name)) == len(runs)  # a finished study reruns nothing
    changed, _ = _sweep(mlflow_env, "--trials", "4", "--folds", "3", "--seeds", "2", "--epochs", "2", study=name)
    assert changed.returncode == 2
    assert f"study {name!r} was run with folds=2" in changed.stderr


@pytest.mark.slow
def test_every_trial_run_logs_its_nets_size_from_its_architecture(mlflow_env):
    from legoexp.model import size

    proc, name = _sweep(mlflow_env, "--trials", "3", *TINY)
    assert proc.returncode == 0, proc.stderr
    trials = [r for r in _runs(name) if r.data.tags["legoexp.kind"] == "trial"]
    assert len(trials) == 3
    for r in trials:
        p = r.data.params
        expected = size(int(p["hidden1"]), int(p["hidden2"]))
        assert (int(p["param_count"]), int(p["macs_per_image"])) == (expected["param_count"], expected["macs_per_image"])


@pytest.mark.slow
def test_the_test_split_is_not_read_until_the_search_is_over(mlflow_env, tracking_uri, tmp_path):
    from legoexp.data import load_split, open_source

    train = load_split(open_source("synthetic"), "train")
    data = tmp_path / "data"
    data.mkdir()
    np.savez(data / "train.npz", images=train.images, labels=train.labels)
    (data / "test.npz").write_bytes(b"not an npz: reading it fails")
    proc, name = _sweep(mlflow_env, "--data", data, "--trials", "3", *TINY, "--select", "simplest-within")
    assert proc.returncode == 2
    assert "test.npz: not a readable .npz file" in proc.stderr
    study = _study(_store_dir(tracking_uri), name)  # ... and yet the whole search had run
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 3
    # ... and the candidates were re-scored and the pick made
    [rescoring] = [r for r in _runs(name) if r.data.tags["legoexp.kind"] == "rescoring"]
    assert rescoring.info.status == "FINISHED" and rescoring.data.params["candidates"]
    assert all(r.info.status != "RUNNING" for r in _runs(name))


@pytest.mark.slow
def test_kill_9_mid_sweep_then_rerun_ends_with_exactly_n_trials_and_nothing_running(mlflow_env, tracking_uri, tmp_path):
    name = f"study-{uuid.uuid4().hex[:8]}"
    args = [sys.executable, "-m", "legoexp.sweep", "--study-name", name, "--experiment-name", name,
            "--trials", "6", "--folds", "2", "--seeds", "2", "--epochs", "4"]
    # held after the 5th fold report: trials 0 and 1 (2 folds each, never pruned before fold 2) are done,
    # trial 2 has one fold reported, and trial 3 is claimed (a sweep starts the next trial's folds early)
    victim = subprocess.Popen(args, env=faults_env(mlflow_env, "trial.fold#5=stop", tmp_path / "held"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    held = held_at_fault(victim, tmp_path / "held")
    assert held == victim.pid
    children = Path(f"/proc/{victim.pid}/task/{victim.pid}/children").read_text().split()
    journal = _store_dir(tracking_uri) / "optuna.journal"
    trials = _study(journal.parent, name).get_trials()
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 2
    assert [t.number for t in trials if t.state == TrialState.RUNNING] == [2, 3]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=60)
    assert children  # its fold workers
    deadline = time.time() + 20
    while any(map(_running, children)) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(map(_running, children)), "workers outlived the sweep"

    proc = subprocess.run(args, env=mlflow_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "marked 2 trial(s) of a dead process as failed" in proc.stderr
    trials = _study(journal.parent, name).get_trials()
    assert len([t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 6
    assert [t.number for t in trials] == list(range(len(trials)))  # no duplicate trial numbers
    assert not any(t.state == TrialState.RUNNING for t in trials)
    runs = _runs(name)
    assert not any(r.info.status == "RUNNING" for r in runs)
    assert sum(r.data.tags["legoexp.kind"] == "sweep" for r in runs) == 1  # the rerun reused the parent
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert {r.data.tags["fail_reason"] for r in killed} == {"its process died"}
    assert sorted(r.data.tags["trial_number"] for r in killed) == ["2", "3"]


@pytest.mark.slow
def test_a_fold_worker_killed_is_a_one_line_error_and_a_rerun_completes(mlflow_env, tracking_uri, tmp_path):
    name = f"study-{uuid.uuid4().hex[:8]}"
    args = [sys.executable, "-m", "legoexp.sweep", "--study-name", name, "--experiment-name", name,
            "--trials", "3", "--folds", "2", "--seeds", "2", "--epochs", "6"]
    sweep = subprocess.Popen(args, env=faults_env(mlflow_env, "fold.train=stop", tmp_path / "held"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker = held_at_fault(sweep, tmp_path / "held")  # a fold process, about to train
    assert worker != sweep.pid and b"spawn_main" in Path(f"/proc/{worker}/cmdline").read_bytes()
    os.kill(worker, signal.SIGKILL)  # as the kernel's out-of-memory killer would
    out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 2, err
    assert err.strip().splitlines()[-1] == ("error: a fold-training worker process died (killed, or out of "
                                            "memory); rerun the same command to resume")
    assert "Traceback" not in err
    runs = _runs(name)
    assert not any(r.info.status == "RUNNING" for r in runs)
    assert any(r.info.status == "FAILED" and "BrokenProcessPool" in r.data.tags.get("fail_reason", "") for r in runs)

    proc = subprocess.run(args, env=mlflow_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    trials = _study(_store_dir(tracking_uri), name).get_trials()
    assert len([t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 3
    assert not any(r.info.status == "RUNNING" for r in _runs(name))


def test_a_trial_whose_claim_broke_off_is_failed_only_under_the_claim_lock(tmp_path):
    from legoexp.study.claims import Watch, fail_orphans

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "optuna.journal")))
    study = optuna.create_study(study_name="s", storage=storage)
    study.ask()  # asked for, but its owner never recorded (the storage went away in between)
    seen = []
    watch = Watch(interval=3600)
    assert fail_orphans(study, watch, lambda t, why: seen.append((t.number, why))) == 0  # may be a claim in progress
    assert study.trials[0].state == TrialState.RUNNING
    assert fail_orphans(study, watch, lambda t, why: seen.append((t.number, why)), claims_locked=True) == 1
    assert study.trials[0].state == TrialState.FAIL
    assert study.trials[0].user_attrs["fail_reason"] == "its claim broke off"
    assert seen == [(0, "its claim broke off")]


@pytest.mark.slow
def test_a_trial_run_left_running_after_its_trial_ended_is_ended_by_the_next_sweep(mlflow_env, tracking_uri):
    proc, name = _sweep(mlflow_env, "--trials", "2", *TINY)
    assert proc.returncode == 0, proc.stderr
    client = MlflowClient()
    stray = next(r for r in _runs(name) if r.data.tags["legoexp.kind"] == "trial")
    client.update_run(stray.info.run_id, status="RUNNING")  # as if its process could not reach the store to end it
    client.set_tag(stray.info.run_id, "state", "running")
    proc, _ = _sweep(mlflow_env, "--trials", "2", *TINY, study=name)
    assert proc.returncode == 0, proc.stderr
    run = client.get_run(stray.info.run_id)
    assert (run.info.status, run.data.tags["state"]) == (stray.info.status, stray.data.tags["state"])  # as its trial ended
    assert run.data.metrics == stray.data.metrics
    assert not any(r.info.status == "RUNNING" for r in _runs(name))


@pytest.mark.slow
def test_a_diverging_trial_is_recorded_and_the_study_goes_on(mlflow_env, tracking_uri, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("hidden1: {type: categorical, choices: [128]}\nhidden2: {type: categorical, choices: [64]}\n"
                     "lr: {type: categorical, choices: [0.04, 100000.0]}\nbatch_size: {type: categorical, choices: [34]}\n")
    proc, name = _sweep(mlflow_env, "--trials", "3", "--search-space", space, *TINY)
    assert proc.returncode == 0, proc.stderr
    trials = _study(_store_dir(tracking_uri), name).get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and all("training loss became" in t.user_attrs["fail_reason"] for t in failed)
    assert len([t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 3
    failed_runs = [r for r in _runs(name) if r.data.tags.get("state") == "failed"]
    assert len(failed_runs) == len(failed)
    assert all(r.info.status == "FAILED" and "loss became" in r.data.tags["fail_reason"] for r in failed_runs)


@pytest.mark.slow
def test_same_seed_gives_the_same_sequence_of_trial_params_and_the_same_importances(mlflow_env, tracking_uri, tmp_path):
    sequences, importances = [], []
    for k in range(2):
        proc, name = _sweep(mlflow_env, "--trials", "4", "--seed", "3", *TINY)
        assert proc.returncode == 0, proc.stderr
        sequences.append([t.params for t in _study(_store_dir(tracking_uri), name).get_trials()])
        parent = next(r for r in _runs(name) if r.data.tags["legoexp.kind"] == "sweep")
        png = MlflowClient().download_artifacts(parent.info.run_id, "plots/param_importances.png", str(tmp_path / str(k)))
        importances.append(Path(png).read_bytes())
    assert sequences[0] == sequences[1]
    assert len({tuple(sorted(p.items())) for p in sequences[0]}) > 1
    # the same importances too (Optuna's default evaluator, PED-ANOVA, draws nothing at random)
    assert importances[0] == importances[1]


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [1, 2])
def test_timeout_is_one_deadline_for_the_whole_command_workers_included(mlflow_env, tracking_uri, jobs):
    proc, name = _sweep(mlflow_env, "--trials", "500", "--timeout", "20", "--jobs", str(jobs), *TINY)
    assert proc.returncode == 0, proc.stderr
    trials = _study(_store_dir(tracking_uri), name).get_trials()
    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert 0 < done < 500
    assert f"stopped at the time limit (--timeout 20 s): {done} of 500 trials finished" in proc.stderr
    # the deadline is 20 s after the command started, so at most 20 s after its first trial started:
    # no process claimed a trial later, and every claimed trial ended
    first = min(t.datetime_start for t in trials)
    assert all((t.datetime_start - first).total_seconds() <= 20 for t in trials)
    assert all(t.state.is_finished() for t in trials)
    assert {r.info.status for r in _runs(name)} == {"FINISHED"}


def test_a_time_limit_reached_before_any_trial_completed_is_one_line_and_nothing_running(mlflow_env):
    proc, name = _sweep(mlflow_env, "--timeout", "0.01", *TINY)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no trial of study")
    assert "Traceback" not in proc.stderr
    assert {r.info.status for r in _runs(name)} == {"FAILED"}  # the parent run


@pytest.mark.parametrize("args, message", [
    (["--trials", "0"], "trials=0; expected an integer 1..100000"),
    (["--folds", "1"], "folds=1; expected an integer 2..100"),
    (["--storage", "postgresql+psycopg2://nobody@127.0.0.1:1/none"], "cannot open it as an Optuna storage"),
    (["--storage", "journal:/no/such/dir/x.journal"], "directory /no/such/dir does not exist"),
    (["--storage", "sqlite:////no/such/dir/optuna.db"], "directory /no/such/dir does not exist"),
    (["--folds", "60"], "folds=60: the smallest class"),
    (["--objectives", "accuracy,latency"], "objectives='accuracy,latency'; expected [accuracy] or [accuracy, params]"),
    (["--select", "fastest"], "select='fastest'; expected one of best, simplest-within, rescored"),
    (["--tolerance", "0"], "tolerance=0.0; expected a number > 0 and < 1"),
    (["--tolerance", "1"], "tolerance=1.0; expected a number > 0 and < 1"),
    (["--top-k", "1"], "top_k=1; expected an integer 2..1000"),
    (["--select", "simplest-within", "--trials", "1"], "select='simplest-within' compares candidates: it needs "
                                                        "trials >= 2, got trials=1"),
])
def test_bad_options_are_one_line_exit_2_and_create_nothing(mlflow_env, tracking_uri, args, message):
    before = set(_store_dir(tracking_uri).iterdir())
    proc, name = _sweep(mlflow_env, *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.strip().count("\n") == 0
    assert message in proc.stderr
    assert set(_store_dir(tracking_uri).iterdir()) == before  # before _runs, which may create the store
    assert _runs(name) == []


def test_an_unknown_key_in_a_config_file_is_refused(mlflow_env, tmp_path):
    bad = tmp_path / "exp.yaml"
    bad.write_text("trials: 3\nlearning_rate: 0.1\n")
    proc, name = _sweep(mlflow_env, "--config", bad)
    assert proc.returncode == 2
    assert f"{bad}: unknown key 'learning_rate'" in proc.stderr
    assert _runs(name) == []


@pytest.mark.slow
def test_jobs_2_with_a_worker_killed_still_fills_the_study_exactly(mlflow_env, tracking_uri, tmp_path):
    name = f"study-{uuid.uuid4().hex[:8]}"
    main = subprocess.Popen([sys.executable, "-m", "legoexp.sweep", "--study-name", name, "--experiment-name", name,
                             "--trials", "8", "--jobs", "2", *TINY[:2], "--seeds", "2", "--epochs", "4"],
                            env=faults_env(mlflow_env, "trial.fold=stop", tmp_path / "held"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal_dir = _store_dir(tracking_uri)
    held = held_at_fault(main, tmp_path / "held")  # a worker, after its first fold report
    assert held != main.pid
    # the trial it reports on, and the next one it has claimed already (unless the study was full)
    lost = [t.number for t in _study(journal_dir, name).get_trials()
            if t.state == TrialState.RUNNING and t.user_attrs.get("owner", "").split(":")[1:2] == [str(held)]]
    # (.get: the other worker, running on, may have asked for a trial and not yet set its owner)
    assert 1 <= len(lost) <= 2
    os.kill(held, signal.SIGKILL)
    out, err = main.communicate(timeout=600)
    assert main.returncode == 0, err
    trials = _study(journal_dir, name).get_trials()
    assert len([t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 8
    assert [t.number for t in trials] == list(range(len(trials)))
    assert not any(t.state == TrialState.RUNNING for t in trials)
    assert len({t.user_attrs["owner"] for t in trials}) >= 2  # the trials really ran in several workers
    runs = _runs(name)
    assert not any(r.info.status == "RUNNING" for r in runs)
    assert sum(r.data.tags["legoexp.kind"] == "sweep" for r in runs) == 1
    parent = next(r for r in runs if r.data.tags["legoexp.kind"] == "sweep")
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in runs if r is not parent)
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert sorted(int(r.data.tags["trial_number"]) for r in killed) == lost
    assert {r.data.tags["fail_reason"] for r in killed} == {"its process died"}


def test_a_worker_without_a_main_sweep_waits_for_it_then_is_told_to_start_it(mlflow_env):
    proc, name = _sweep(mlflow_env, "--worker", "--wait", "2", "--trials", "2", *TINY)
    assert proc.returncode == 2
    assert "waiting up to 2 s for a main sweep to create the parent run" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (f"error: study {name!r} has no parent run after 2 s: start the "
                                                    "main `python -m legoexp.sweep` (without --worker) too")


@pytest.mark.slow
def test_a_journal_whose_last_record_was_torn_is_repaired_and_the_sweep_resumes(mlflow_env, tracking_uri):
    proc, name = _sweep(mlflow_env, "--trials", "2", *TINY)
    assert proc.returncode == 0, proc.stderr
    journal = _store_dir(tracking_uri) / "optuna.journal"
    raw = journal.read_bytes()
    last = raw.rstrip(b"\n").rfind(b"\n") + 1
    torn = len(raw) - last - (len(raw) - last) // 2
    journal.write_bytes(raw[:-torn])  # the last record cut in half, as a crash mid-write leaves it
    proc, _ = _sweep(mlflow_env, "--trials", "3", *TINY, study=name)
    assert proc.returncode == 0, proc.stderr
    assert f"{journal}: dropped its last record, {len(raw) - last - torn} bytes cut short" in proc.stderr
    trials = _study(journal.parent, name).get_trials()  # Optuna reads every record again
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 3
    assert journal.read_bytes().endswith(b"\n")
