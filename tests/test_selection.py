"""Which model to ship: the rules on known scores, and the whole sweep with each rule and objective."""

import uuid

import numpy as np
import pytest
from conftest import run_module
from mlflow.tracking import MlflowClient
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from legoexp.comparison.stats import corrected_mean_ci, mean_ci
from legoexp.errors import UserError
from legoexp.model import size
from legoexp.selection import optimism, rules

DISTRIBUTIONS = {"hidden1": IntDistribution(1, 2048), "hidden2": IntDistribution(1, 2048),
                 "lr": FloatDistribution(1e-4, 1), "batch_size": IntDistribution(1, 512)}


def _trial(number, accuracy, hidden1, hidden2=64, lr=0.04, multi=False):
    params = {"hidden1": hidden1, "hidden2": hidden2, "lr": lr, "batch_size": 34}
    values = [accuracy, size(hidden1, hidden2)["param_count"]] if multi else [accuracy]
    trial = create_trial(params=params, distributions=DISTRIBUTIONS, values=values,
                         user_attrs={"fold_accuracies": [accuracy - 0.01, accuracy + 0.01]})
    trial.number = number
    return trial


def test_the_corrected_interval_is_the_plain_one_widened_by_the_overlap_of_training_sets():
    values = [0.91, 0.95, 0.93, 0.90, 0.96, 0.94]
    mean, lo, hi = corrected_mean_ci(values, folds=3)
    plain_mean, plain_lo, plain_hi = mean_ci(values)
    assert mean == plain_mean
    # the plain interval's half width times sqrt((1/n + 1/(k-1)) / (1/n)) = sqrt(1 + n/(k-1)) = 2
    assert (hi - lo) == pytest.approx(2 * (plain_hi - plain_lo))
    assert corrected_mean_ci([0.9, 0.9, 0.9], folds=3) == (0.9, 0.9, 0.9)


def test_candidates_are_the_top_k_by_search_cv_smallest_first_one_per_point():
    complete = [_trial(0, 0.90, 128), _trial(1, 0.95, 512), _trial(2, 0.93, 32), _trial(3, 0.95, 512),
                _trial(4, 0.80, 16)]
    found = rules.candidates(complete, "simplest-within", top_k=3)
    assert [c.number for c in found] == [2, 0, 1]  # 3 repeats 1's point; 4 is not in the top 3
    assert found[0].param_count < found[1].param_count < found[2].param_count
    assert found[0].folds == pytest.approx((0.92, 0.94))
    assert [c.number for c in rules.candidates(complete, "best", top_k=3)] == [1]
    with pytest.raises(UserError, match="select='simplest-within' compares candidates, but the study has 1 "):
        rules.candidates(complete[:1], "simplest-within", top_k=3)


def test_a_multi_objective_studys_candidates_are_its_front():
    complete = [_trial(0, 0.90, 128, multi=True), _trial(1, 0.95, 512, multi=True), _trial(2, 0.85, 32, multi=True)]
    found = rules.candidates(complete, "rescored", top_k=2, front=complete)
    assert [c.number for c in found] == [2, 0, 1]  # all of the front, top_k aside


def _found(*accuracy_and_width):
    return sorted((rules.Candidate.of(_trial(n, a, w)) for n, (a, w) in enumerate(accuracy_and_width)),
                  key=lambda c: c.key)


def test_simplest_within_takes_the_smallest_whose_paired_lower_bound_is_above_minus_tolerance():
    found = _found((0.95, 512), (0.94, 128), (0.90, 16))  # trial 0 big, 1 mid, 2 small
    rng = np.random.default_rng(0)
    base = rng.uniform(0.9, 0.98, 15)
    scores = {0: list(base), 1: list(base - 0.003 + rng.normal(0, 0.001, 15)), 2: list(base - 0.05)}
    choice = rules.pick("simplest-within", found, scores, folds=5, tolerance=0.01)
    assert choice.most_accurate.number == 0
    assert choice.chosen.number == 1  # 2 loses 0.05 for sure; 1 loses about 0.003
    d, lo, hi = choice.difference(choice.chosen)
    assert -0.01 < lo < d < 0 and choice.difference(found[0])[1] < -0.01
    # a tighter tolerance keeps the most accurate
    assert rules.pick("simplest-within", found, scores, folds=5, tolerance=0.001).chosen.number == 0
    # rescored: the most accurate on the fresh folds, whatever the search said
    scores[2] = list(base + 0.01)
    assert rules.pick("rescored", found, scores, folds=5, tolerance=0.01).chosen.number == 2
    assert "<- chosen" in choice.table() and "select=simplest-within (tolerance 0.01): trial 1" in choice.summary()


def test_the_optimism_is_search_cv_minus_test_per_seed():
    found = _found((0.99, 128))
    choice = rules.pick("best", found, {0: [0.97, 0.98, 0.96, 0.97]}, folds=2, tolerance=0.01)
    picked = optimism.of(choice, [0.95, 0.96, 0.94])
    assert picked.search_cv == 0.99 and picked.test[0] == pytest.approx(0.95)
    assert picked.optimism[0] == pytest.approx(0.04)
    assert picked.optimism[1] < 0.04 < picked.optimism[2]
    assert picked.metrics()["rescored_cv_mean"] == pytest.approx(0.97)


def _sweep(env, *args):
    name = f"study-{uuid.uuid4().hex[:8]}"
    proc = run_module("legoexp.sweep", "--study-name", name, "--experiment-name", name, "--model-name", name,
                      "--folds", "2", "--seeds", "2", "--epochs", "2", "--quiet", *args, env=env)
    return proc, name


@pytest.mark.slow
def test_a_multi_objective_study_picks_simplest_within_and_registers_it_with_its_evidence(mlflow_env, tracking_uri):
    from pathlib import Path

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    proc, name = _sweep(mlflow_env, "--trials", "8", "--objectives", "accuracy,params", "--select",
                        "simplest-within", "--tolerance", "0.05", "--repeats", "2")
    assert proc.returncode == 0, proc.stderr
    journal = Path(tracking_uri[len("sqlite:///"):]).parent / "optuna.journal"
    study = optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(journal))))
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_accuracy", "param_count"]
    trials = study.get_trials()
    assert all(t.state == TrialState.COMPLETE for t in trials)  # nothing pruned
    for t in trials:
        assert t.values[1] == size(t.params["hidden1"], t.params["hidden2"])["param_count"]
        assert t.values[0] == pytest.approx(np.mean(t.user_attrs["fold_accuracies"]))

    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    by_kind = {}
    for r in runs:
        by_kind.setdefault(r.data.tags["legoexp.kind"], []).append(r)
    front = {t.number for t in study.best_trials}
    tagged = {int(r.data.tags["trial_number"]) for r in by_kind["trial"] if r.data.tags.get("pareto_front") == "true"}
    assert tagged == front
    [parent] = by_kind["sweep"]
    assert "plots/pareto_front.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}

    [rescoring] = by_kind["rescoring"]
    candidates = [int(n) for n in rescoring.data.params["candidates"].split(",")]
    assert set(candidates) == front
    scores = {n: [m.value for m in sorted(client.get_metric_history(rescoring.info.run_id, f"cv_trial{n}"),
                                          key=lambda m: m.step)] for n in candidates}
    assert {len(s) for s in scores.values()} == {2 * 2}  # repeats x folds, paired
    [comparison] = by_kind["comparison"]
    chosen, most = int(comparison.data.params["best_trial"]), int(comparison.data.tags["most_accurate_trial"])
    assert comparison.data.tags["select"] == "simplest-within"
    assert most == max(candidates, key=lambda n: (np.mean(scores[n]), -size(
        *(study.trials[n].params[k] for k in ("hidden1", "hidden2")))["param_count"]))
    lo = corrected_mean_ci(np.subtract(scores[chosen], scores[most]), folds=2)[1]
    assert chosen == most or lo > -0.05
    smaller = [n for n in candidates if size(*(study.trials[n].params[k] for k in ("hidden1", "hidden2")))["param_count"]
               < int(comparison.data.tags["chosen_param_count"])]
    assert all(corrected_mean_ci(np.subtract(scores[n], scores[most]), folds=2)[1] <= -0.05 for n in smaller)
    assert int(comparison.data.tags["chosen_param_count"]) <= int(comparison.data.tags["most_accurate_param_count"])
    chosen_run = next(r for r in by_kind["trial"] if r.data.tags["trial_number"] == str(chosen))
    assert chosen_run.data.metrics["latency_batch1_ms"] > 0 and chosen_run.data.metrics["latency_batch100_ms"] > 0
    assert chosen_run.data.tags["candidate"] == "true" and "cores" in chosen_run.data.tags["latency_machine"]

    tests = [m.value for m in client.get_metric_history(comparison.info.run_id, "best_test_accuracy")]
    metrics = comparison.data.metrics
    assert metrics["search_cv"] == pytest.approx(study.trials[chosen].values[0])
    assert metrics["optimism_mean"] == pytest.approx(metrics["search_cv"] - np.mean(tests))
    assert metrics["rescored_cv_mean"] == pytest.approx(np.mean(scores[chosen]))
    assert "optimism of the pick = search CV - test" in proc.stdout

    challenger = client.get_model_version_by_alias(name, "challenger")
    assert challenger.tags["select"] == "simplest-within" and challenger.tags["comparison_run_id"] == comparison.info.run_id
    assert challenger.tags["candidates"] == rescoring.data.params["candidates"]
    assert challenger.tags["chosen_param_count"] == comparison.data.tags["chosen_param_count"]
    assert float(challenger.tags["chosen_latency_batch1_ms"]) > 0

    # the same study again: re-scored once, compared once
    again = run_module("legoexp.sweep", "--study-name", name, "--experiment-name", name, "--model-name", name,
                       "--folds", "2", "--seeds", "2", "--epochs", "2", "--quiet", "--trials", "8", "--objectives",
                       "accuracy,params", "--select", "simplest-within", "--tolerance", "0.05", "--repeats", "2",
                       env=mlflow_env)
    assert again.returncode == 0, again.stderr
    assert "nothing left to do" in again.stderr and "re-scoring" not in again.stderr
    assert len(client.search_runs([client.get_experiment_by_name(name).experiment_id])) == len(runs)
    single = run_module("legoexp.sweep", "--study-name", name, "--experiment-name", name, "--trials", "8",
                        "--folds", "2", "--seeds", "2", "--epochs", "2", env=mlflow_env)
    assert single.returncode == 2
    assert single.stderr.strip() == (f"error: study {name!r} was run with objectives='accuracy,params': rerun it with "
                                     "the same objectives, or start a new study with another --study-name")


@pytest.mark.slow
def test_a_rule_that_needs_candidates_the_study_lacks_is_one_line_and_changes_nothing(mlflow_env):
    proc, name = _sweep(mlflow_env, "--trials", "1")  # one complete trial, compared and registered
    assert proc.returncode == 0, proc.stderr
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name).experiment_id
    before = {r.info.run_id: r.info.status for r in client.search_runs([experiment])}
    versions = {v.version: v.tags for v in client.search_model_versions(f"name = '{name}'")}
    # the same study with a rule that compares candidates, its search past its deadline at once: still 1 trial
    again = run_module("legoexp.sweep", "--study-name", name, "--experiment-name", name, "--model-name", name,
                       "--folds", "2", "--seeds", "2", "--epochs", "2", "--quiet", "--trials", "2",
                       "--select", "rescored", "--deadline", "1", env=mlflow_env)
    assert again.returncode == 2, again.stderr
    assert again.stderr.strip().splitlines()[-1] == (
        "error: select='rescored' compares candidates, but the study has 1 complete trial(s); give it more --trials "
        "(or --select best), then rerun the same command")
    after = {r.info.run_id: r.info.status for r in client.search_runs([experiment])}
    parent = next(r for r in client.search_runs([experiment]) if r.data.tags["legoexp.kind"] == "sweep")
    assert after == before | {parent.info.run_id: "FAILED"}  # no new run; the parent ended, not RUNNING
    assert {v.version: v.tags for v in client.search_model_versions(f"name = '{name}'")} == versions
