"""What a finished sweep leaves behind: its best trial and Optuna's plots on the parent run, the
baseline-vs-best comparison on the test split (read here for the first time), and both models in
the registry (@challenger, and @baseline once) with the config, data and seeds that made them.

Each function takes the ``search.Search`` whose study has just reached its trials.
"""

import sys

import mlflow
import numpy as np
from optuna.trial import TrialState

from legoexp import plots, registry, tracking
from legoexp.comparison.fits import compare, fit_configs
from legoexp.comparison.runs import log_comparison, read_comparison, seeds_text
from legoexp.comparison.stats import paired_comparison
from legoexp.config import TrainConfig, sweep_config
from legoexp.ops import faults, timings
from legoexp.study import design, progress


def log_study(search) -> None:
    """Best params and val_accuracy, and Optuna's plots, on the parent run."""
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    best = search.study.best_trial
    # tags, not params: a resumed study with more trials may find a new best
    tracking.set_tags(search.parent_id, {f"best_{k}": v for k, v in best.params.items()} |
                      {"best_trial": best.number})
    tracking.log_metrics(search.parent_id, {"val_accuracy": best.value,
                                          "finished_trials": design.count_finished(search.study)})
    values = [t.value for t in search.study.get_trials(states=(TrialState.COMPLETE,))]
    figures = {"expected_best_val_accuracy": plots.expected_max_curve(values)}
    drawers = {"optimization_history": ovm.plot_optimization_history,
               "param_importances": ovm.plot_param_importances,
               "parallel_coordinate": ovm.plot_parallel_coordinate, "slice": ovm.plot_slice}
    for name, draw in drawers.items():
        try:
            axes = draw(search.study)
        except (ValueError, RuntimeError) as e:  # e.g. importances need 2+ complete trials
            print(f"skipped plot {name}: {e}", file=sys.stderr)
            continue
        figures[name] = np.ravel(axes)[0].figure
    faults.point("report.figures")
    with mlflow.start_run(run_id=search.parent_id):
        tracking.log_figures(figures)
    plt.close("all")

def needs_comparison(search) -> bool:
    """False when this study's best trial was already compared and registered (a rerun)."""
    done = search.client.get_run(search.parent_id).data.tags.get("compared_trial")
    return done != str(search.study.best_trial.number)

def start_comparison(search) -> None:
    """Hand the fits of the comparison that ``compare_and_register`` is about to make to the fold
    workers: they train while this process draws the study's figures. Nothing if it was made."""
    best_trial, seeds = search.study.best_trial, _seeds(search)
    if _finished_comparison(search, best_trial, seeds) is None:
        search.runner.start_fits(fit_configs([search.baseline, _config(search, best_trial)], seeds))


def _seeds(search) -> list[int]:
    return list(range(search.cfg["seed"], search.cfg["seed"] + search.cfg["seeds"]))


def _config(search, trial) -> TrainConfig:
    return sweep_config(search.cfg, trial.params)


def compare_and_register(search, test_split, quiet: bool = False) -> None:
    """Compare the best trial's configuration with the baseline over the seeds, log it as the study's
    ``comparison`` run, register both models. Call it holding the study's lock: a rerun after a
    kill at any step reuses what was done (a finished comparison run, versions registered from
    it) and does the rest, so nothing is trained, logged or registered twice."""
    best_trial, seeds = search.study.best_trial, _seeds(search)
    run = _finished_comparison(search, best_trial, seeds)
    if run is None:
        _end_abandoned_comparisons(search)
        best = _config(search, best_trial)
        print(f"comparing baseline and best (trial {best_trial.number}) over seeds {seeds} on the test split",
              file=sys.stderr)
        comparison = compare(search.baseline, best, seeds, search.train_split, test_split,
                             progress=progress.Fits(2 * len(seeds), quiet), fit=search.runner.fits)
        timings.lap("comparison")
        faults.point("report.compared")
        tags = {"mlflow.parentRunId": search.parent_id, "legoexp.study": search.cfg["study_name"]}
        params = {"best_trial": best_trial.number, "data_digest": search.train_split.digest,
                  "test_digest": test_split.digest}
        run_id = log_comparison(search.client, search.experiment_id, "comparison", tags,
                                (comparison.baseline, comparison.best), seeds, comparison.result, params,
                                input_example=test_split.images[:2])
        run = search.client.get_run(run_id)
    seeds, arms = read_comparison(search.client, run)
    result = paired_comparison(arms["baseline"].accuracies, arms["best"].accuracies)
    print("\n" + result.as_table() + "\n" + result.verdict())
    _register(search, run, arms, seeds, result, best_trial)
    search.client.set_tag(search.parent_id, "compared_trial", str(best_trial.number))
    timings.lap("models")


def _study_comparisons(search, where: str) -> list:
    return search.client.search_runs([search.experiment_id], f"tags.`legoexp.study` = '{search.cfg['study_name']}' "
                                     f"and tags.`legoexp.kind` = 'comparison' and {where}")


def _finished_comparison(search, best_trial, seeds):
    """This study's finished comparison of ``best_trial`` over ``seeds`` with both models logged, or None."""
    for run in _study_comparisons(search, f"attributes.status = 'FINISHED' and params.best_trial = "
                                          f"'{best_trial.number}' and params.seeds = '{seeds_text(seeds)}'"):
        if {"baseline_model_uri", "best_model_uri"} <= set(run.data.tags):
            return run
    return None


def _end_abandoned_comparisons(search) -> None:
    """Comparisons are logged holding the study's lock, which we hold: a RUNNING one is a dead process's."""
    for run in _study_comparisons(search, "attributes.status = 'RUNNING'"):
        search.client.set_terminated(run.info.run_id, "KILLED")


def _register(search, run, arms, seeds, result, best_trial) -> None:
    name = search.cfg["model_name"]
    common = {"comparison_run_id": run.info.run_id, "study_name": search.cfg["study_name"]}
    for role, alias in (("best", "challenger"), ("baseline", "baseline")):
        arm = arms[role]
        key = {"comparison_run_id": run.info.run_id, "role": role}
        if alias == "baseline" and registry.alias_version(name, "baseline") is not None \
                and registry.find_version(name, key) is None:
            continue  # a baseline is registered once, by the first sweep
        lo, hi = result.ci_b if role == "best" else result.ci_a
        value = best_trial.value if role == "best" else _baseline_value(search)
        # the version's training config and data, so promotion can retrain it with other seeds
        config = {k: v for k, v in arm.config.as_params().items() if k != "seed"}
        tags = {**common, **key, **config, **tracking.provenance(search.cfg["data"], search.source, search.train_split),
                "test_accuracy_mean": np.mean(arm.accuracies),
                "test_accuracy_ci": f"{lo:.4f}..{hi:.4f}", "seed": seeds[arm.median_index], "seeds": seeds_text(seeds)}
        if value is not None:
            tags["val_accuracy"] = value
        version = registry.register_once(run.data.tags[f"{role}_model_uri"], name, alias, tags, key)
        print(f"registered {name} version {version} as @{alias}")


def _baseline_value(search) -> float | None:
    """val_accuracy of the study's baseline trial; None if it was pruned or failed."""
    for t in search.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("baseline"):
            return t.value
    return None
