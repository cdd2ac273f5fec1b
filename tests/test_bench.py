"""`python -m legoexp.bench`: the benchmark command runs end to end and reports every row (its
figures are for the closing notes, not asserted here: shared machines make timings noisy); the
practised user's study (`legoexp.bench.skilled`) runs the study it claims to."""

import json
import os

import pytest
from conftest import run_module


@pytest.mark.slow
def test_the_benchmark_reports_every_row_and_writes_json(mlflow_env, tmp_path):
    out = tmp_path / "bench.json"
    proc = run_module("legoexp.bench", "--data", "synthetic", "--repeat", "2", "--trials", "2", "--peer-sweep",
                      "--json", out, "--", "--folds", "2", "--seeds", "2", "--epochs", "2", env=mlflow_env, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("bench.json")] == ["bench.json"]  # no temp file
    rows = json.loads(out.read_text())
    for name in ("fit_samples_per_s", "lab_loop_samples_per_s", "numpy_peer_samples_per_s",
                 "numpy_peer_2threads_samples_per_s", "speedup_vs_lab", "vs_numpy_peer", "matmul_gflops",
                 "bound_ratio", "baseline_wall_s"):
        assert rows[name]["best"] > 0 and rows[name]["median"] > 0, name
        assert name in proc.stdout
    fit, lab = rows["fit_samples_per_s"], rows["lab_loop_samples_per_s"]
    assert rows["speedup_vs_lab"]["best"] == pytest.approx(fit["best"] / lab["best"])
    faster = max(rows["numpy_peer_samples_per_s"]["best"], rows["numpy_peer_2threads_samples_per_s"]["best"])
    assert rows["vs_numpy_peer"]["best"] == pytest.approx(fit["best"] / faster)
    assert rows["baseline_wall_s"]["best"] <= rows["baseline_wall_s"]["median"]
    assert rows["baseline_new_store_wall_s"] >= rows["baseline_wall_s"]["best"]
    assert "GFLOP/s" in proc.stdout

    # the sweep's wall time, split into parts that add up to it; the shares count everything
    parts = rows["sweep_parts_s"]
    assert {"startup", "setup", "search_training", "search_bookkeeping", "figures", "comparison_training",
            "models", "exit"} <= set(parts)
    assert all(v >= 0 for v in parts.values())
    assert sum(parts.values()) == pytest.approx(rows["sweep_wall_s"], rel=0.01)
    training = sum(v for k, v in parts.items() if k.endswith("_training"))  # search, re-scoring, comparison
    assert rows["overhead_share"] == pytest.approx(1 - training / rows["sweep_wall_s"])
    assert 0 < rows["overhead_share"] < 1
    # the share of MLflow, Optuna and figures comes from a second, instrumented sweep
    assert 0 < rows["tracking_share"] < 1 and rows["sweep_probe_wall_s"] > 0
    assert 0 < rows["sweep_tracking_imports_s"] < rows["sweep_probe_wall_s"]
    assert rows["sweep_figures_s"] == parts["figures"]
    # the CPU of the sweep and its fold workers, against what the machine's cores could give in its wall time
    cores = len(os.sched_getaffinity(0))
    assert 0 < rows["sweep_cpu_s"] <= 1.02 * rows["sweep_wall_s"] * cores
    assert rows["sweep_cores_busy"] == pytest.approx(rows["sweep_cpu_s"] / (rows["sweep_wall_s"] * cores))
    # of it, the fits' and folds' (in the workers) and the main process's: parts of the whole, neither empty
    assert 0 < rows["sweep_training_cpu_share"] < 1 and 0 < rows["sweep_main_cpu_share"] < 1
    assert rows["sweep_training_cpu_share"] + rows["sweep_main_cpu_share"] < 1
    assert "search: waiting for folds to train" in proc.stdout

    assert rows["peer_sweep_wall_s"] > 0
    assert rows["sweep_vs_peer"] == pytest.approx(rows["peer_sweep_wall_s"] / rows["sweep_wall_s"])
    assert rows["skilled_peer_sweep_wall_s"] > 0
    assert rows["sweep_vs_skilled_peer"] == pytest.approx(rows["skilled_peer_sweep_wall_s"] / rows["sweep_wall_s"])
    assert rows["machine"]["cores"] >= 1 and set(rows["machine"]["versions"]) == {"mxnet", "numpy", "mlflow", "optuna"}


def test_an_unknown_option_is_refused_before_any_work(mlflow_env):
    proc = run_module("legoexp.bench", "--folds", "2", env=mlflow_env, timeout=120)
    assert proc.returncode == 2
    assert "unrecognized arguments: --folds 2 (options for the sweep go after --)" in proc.stderr


@pytest.mark.slow
def test_the_skilled_peer_runs_the_whole_study_in_two_processes_with_nested_runs(mlflow_env, tmp_path):
    import optuna
    from mlflow import MlflowClient
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    from legoexp import config

    store, journal = f"sqlite:///{tmp_path}/peer.db", tmp_path / "peer.journal"
    proc = run_module("legoexp.bench.skilled", "--data", "synthetic", "--trials", "5", "--folds", "3", "--epochs", "1",
                      "--journal", journal, env={**mlflow_env, "MLFLOW_TRACKING_URI": store}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "best val_accuracy" in proc.stdout

    # the study: exactly the trials asked for, all finished, the lab's baseline first, two processes
    study = optuna.load_study(study_name="skilled-peer", storage=JournalStorage(JournalFileBackend(str(journal))))
    trials = study.trials
    assert [t.number for t in trials] == list(range(5))
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    baseline = {k: config.defaults("baseline")[k] for k in config.SEARCHED}
    assert trials[0].params == baseline and trials[0].user_attrs["baseline"]
    assert len({t.user_attrs["pid"] for t in trials}) == 2
    for t in trials:
        assert sorted(t.intermediate_values) == list(range(len(t.intermediate_values)))  # a report per fold
        assert len(t.intermediate_values) == 3 or t.state == TrialState.PRUNED

    # MLflow: one parent run, a finished child run per trial with its params and its folds' accuracies
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("skilled-peer").experiment_id])
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {int(r.data.tags["trial_number"]): r for r in runs if r is not parent}
    assert sorted(children) == list(range(5))
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(study.best_value)
    for t in trials:
        run = children[t.number]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.info.status == "FINISHED"
        assert run.data.params == {k: str(v) for k, v in t.params.items()}
        folds = {k: v for k, v in run.data.metrics.items() if k.startswith("val_accuracy_fold")}
        assert folds == {f"val_accuracy_fold{k}": v for k, v in t.intermediate_values.items()}
        if t.state == TrialState.COMPLETE:
            assert run.data.metrics["val_accuracy"] == pytest.approx(t.value)


def test_the_skilled_peer_splits_the_trials_so_that_the_study_ends_at_the_count():
    from legoexp.bench.skilled import shares

    assert shares(30, 2) == [15, 15] and shares(5, 2) == [3, 2] and shares(1, 2) == [1, 0]
