"""What a finished sweep does with its best trial: compare it with the baseline, log it, register it.

The baseline and the best trial's configuration are trained with the same seeds on the whole
training split and scored once on the test split (read here for the first time), the comparison is
logged as the study's ``comparison`` run, and both median-seed models are registered (@challenger,
and @baseline once) with the config, data and seeds that made them. The input is a ``Finished``
study: what the search leaves, named.
"""

import functools
import sys
from dataclasses import dataclass, replace

import numpy as np
import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from legoexp import registry
from legoexp.comparison.fits import compare, fit_configs
from legoexp.comparison.runs import log_comparison, read_comparison, seeds_text
from legoexp.comparison.stats import paired_comparison
from legoexp.config import TrainConfig
from legoexp.ops import faults, timings
from legoexp.study import progress


@dataclass(frozen=True)
class Finished:
    """A study whose search is over, and what its comparison needs."""
    study: optuna.Study
    parent_id: str  # the study's parent run: the comparison is its child
    experiment_id: str
    baseline: TrainConfig  # the lab's hyperparameters at the sweep's epochs and seed
    seeds: list[int]  # of the comparison
    model_name: str  # the registered model
    train_split: object  # data.Split
    provenance: dict  # data, data_source, data_digest: tags of the registered versions
    runner: object  # study.folds.FoldRunner: trains the comparison's fits


def needs_comparison(f: Finished) -> bool:
    """False when this study's best trial was already compared and registered (a rerun)."""
    done = _client().get_run(f.parent_id).data.tags.get("compared_trial")
    return done != str(f.study.best_trial.number)

def start_comparison(f: Finished) -> None:
    """Hand the fits of the comparison that ``compare_and_register`` is about to make to the fold
    workers: they train while this process draws the study's figures. Nothing if it was made."""
    best_trial, seeds = f.study.best_trial, f.seeds
    if _finished_comparison(f, best_trial, seeds) is None:
        f.runner.start_fits(fit_configs([f.baseline, _config(f, best_trial)], seeds))


_client = functools.cache(MlflowClient)  # one client for the report's calls


def _config(f: Finished, trial) -> TrainConfig:
    return replace(f.baseline, **trial.params)


def compare_and_register(f: Finished, test_split, quiet: bool = False) -> None:
    """Compare the best trial's configuration with the baseline over the seeds, log it as the study's
    ``comparison`` run, register both models. Call it holding the study's lock: a rerun after a
    kill at any step reuses what was done (a finished comparison run, versions registered from
    it) and does the rest, so nothing is trained, logged or registered twice."""
    best_trial, seeds = f.study.best_trial, f.seeds
    run = _finished_comparison(f, best_trial, seeds)
    if run is None:
        _end_abandoned_comparisons(f)
        best = _config(f, best_trial)
        print(f"comparing baseline and best (trial {best_trial.number}) over seeds {seeds} on the test split",
              file=sys.stderr)
        comparison = compare(f.baseline, best, seeds, f.train_split, test_split,
                             progress=progress.Fits(2 * len(seeds), quiet), fit=f.runner.fits)
        timings.lap("comparison")
        faults.point("report.compared")
        tags = {"mlflow.parentRunId": f.parent_id, "legoexp.study": f.study.study_name}
        params = {"best_trial": best_trial.number, "data_digest": f.train_split.digest,
                  "test_digest": test_split.digest}
        run_id = log_comparison(_client(), f.experiment_id, "comparison", tags,
                                (comparison.baseline, comparison.best), seeds, comparison.result, params,
                                input_example=test_split.images[:2])
        run = _client().get_run(run_id)
    seeds, arms = read_comparison(_client(), run)
    result = paired_comparison(arms["baseline"].accuracies, arms["best"].accuracies)
    print("\n" + result.as_table() + "\n" + result.verdict())
    _register(f, run, arms, seeds, result, best_trial)
    _client().set_tag(f.parent_id, "compared_trial", str(best_trial.number))
    timings.lap("models")


def _study_comparisons(f: Finished, where: str) -> list:
    return _client().search_runs([f.experiment_id], f"tags.`legoexp.study` = '{f.study.study_name}' "
                                     f"and tags.`legoexp.kind` = 'comparison' and {where}")


def _finished_comparison(f: Finished, best_trial, seeds):
    """This study's finished comparison of ``best_trial`` over ``seeds`` with both models logged, or None."""
    for run in _study_comparisons(f, f"attributes.status = 'FINISHED' and params.best_trial = "
                                          f"'{best_trial.number}' and params.seeds = '{seeds_text(seeds)}'"):
        if {"baseline_model_uri", "best_model_uri"} <= set(run.data.tags):
            return run
    return None


def _end_abandoned_comparisons(f: Finished) -> None:
    """Comparisons are logged holding the study's lock, which we hold: a RUNNING one is a dead process's."""
    for run in _study_comparisons(f, "attributes.status = 'RUNNING'"):
        _client().set_terminated(run.info.run_id, "KILLED")


def _register(f: Finished, run, arms, seeds, result, best_trial) -> None:
    name = f.model_name
    common = {"comparison_run_id": run.info.run_id, "study_name": f.study.study_name}
    for role, alias in (("best", "challenger"), ("baseline", "baseline")):
        arm = arms[role]
        key = {"comparison_run_id": run.info.run_id, "role": role}
        if alias == "baseline" and registry.alias_version(name, "baseline") is not None \
                and registry.find_version(name, key) is None:
            continue  # a baseline is registered once, by the first sweep
        lo, hi = result.ci_b if role == "best" else result.ci_a
        value = best_trial.value if role == "best" else _baseline_value(f)
        # the version's training config and data, so promotion can retrain it with other seeds
        config = {k: v for k, v in arm.config.as_params().items() if k != "seed"}
        tags = {**common, **key, **config, **f.provenance,
                "test_accuracy_mean": np.mean(arm.accuracies),
                "test_accuracy_ci": f"{lo:.4f}..{hi:.4f}", "seed": seeds[arm.median_index], "seeds": seeds_text(seeds)}
        if value is not None:
            tags["val_accuracy"] = value
        version = registry.register_once(run.data.tags[f"{role}_model_uri"], name, alias, tags, key)
        print(f"registered {name} version {version} as @{alias}")


def _baseline_value(f: Finished) -> float | None:
    """val_accuracy of the study's baseline trial; None if it was pruned or failed."""
    for t in f.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("baseline"):
            return t.value
    return None
