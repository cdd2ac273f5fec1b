"""What a finished sweep leaves behind: its best trial and Optuna's plots on the parent run, the
baseline-vs-best comparison on the test split (read here for the first time), and both models in
the registry (@challenger, and @baseline once) with the config, data and seeds that made them.

Each function takes the ``search.Search`` whose study has just reached its trials.
"""

import sys

import mlflow
import numpy as np
from optuna.trial import TrialState

from legoexp import plots, registry, timings, tracking
from legoexp import study as studies
from legoexp.compare import compare, summary_metrics
from legoexp.evidence import seeds_text  # the format promotion reads back
from legoexp.train import TrainConfig


def log_study(search) -> None:
    """Best params and val_accuracy, and Optuna's plots, on the parent run."""
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    best = search.study.best_trial
    # tags, not params: a resumed study with more trials may find a new best
    tracking.set_tags(search.parent_id, {f"best_{k}": v for k, v in best.params.items()} |
                      {"best_trial": best.number})
    tracking.log_metrics(search.parent_id, {"val_accuracy": best.value,
                                          "finished_trials": studies.count_finished(search.study)})
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
    with mlflow.start_run(run_id=search.parent_id):
        tracking.log_figures(figures)
    plt.close("all")

def needs_comparison(search) -> bool:
    """False when this study's best trial was already compared and registered (a rerun)."""
    done = search.client.get_run(search.parent_id).data.tags.get("compared_trial")
    return done != str(search.study.best_trial.number)

def compare_and_register(search, test_split) -> None:
    best_trial = search.study.best_trial
    best = TrainConfig(epochs=search.cfg["epochs"], seed=search.cfg["seed"], **best_trial.params)
    seeds = list(range(search.cfg["seed"], search.cfg["seed"] + search.cfg["seeds"]))
    print(f"comparing baseline and best (trial {best_trial.number}) over seeds {seeds} on the test split",
          file=sys.stderr)
    comparison = compare(search.baseline, best, seeds, search.train_split, test_split,
                         progress=lambda line: print("  " + line, file=sys.stderr), fit=search.runner.fits)
    timings.lap("comparison")
    result = comparison.result
    run = search.client.create_run(search.experiment_id, run_name="comparison",
                                 tags={"mlflow.parentRunId": search.parent_id, "legoexp.kind": "comparison",
                                       "legoexp.study": search.cfg["study_name"], "test": result.test,
                                       "verdict": result.verdict()})
    run_id = run.info.run_id
    try:
        models = _log_comparison(search, run_id, comparison, best_trial, test_split)
    except BaseException as e:
        search.client.set_terminated(run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    search.client.set_terminated(run_id, "FINISHED")
    print("\n" + result.as_table() + "\n" + result.verdict())
    _register(search, models, comparison, best_trial, run_id)
    search.client.set_tag(search.parent_id, "compared_trial", str(best_trial.number))
    timings.lap("models")

def _log_comparison(search, run_id, comparison, best_trial, test_split) -> dict:
    result, seeds = comparison.result, comparison.seeds
    params = {"seeds": seeds_text(seeds), "best_trial": best_trial.number,
              "data_digest": search.train_split.digest, "test_digest": test_split.digest}
    for arm in (comparison.baseline, comparison.best):
        params |= {f"{arm.name}_{k}": v for k, v in arm.config.as_params().items() if k != "seed"}
    tracking.log_params(run_id, params)
    tracking.log_metrics(run_id, summary_metrics(result))
    tracking.log_history(run_id, {f"{arm.name}_test_accuracy": arm.accuracies
                                  for arm in (comparison.baseline, comparison.best)}, first_step=seeds[0])
    with mlflow.start_run(run_id=run_id):
        tracking.log_figures({"seed_comparison": plots.seed_comparison(
            comparison.baseline.accuracies, comparison.best.accuracies, result=result)})
        models = {arm.name: tracking.log_model(arm.nets[arm.median_index], input_example=test_split.images[:2],
                                               name=f"{arm.name}-model")
                  for arm in (comparison.baseline, comparison.best)}
    return models

def _register(search, models, comparison, best_trial, run_id) -> None:
    result = comparison.result
    name = search.cfg["model_name"]
    common = {"comparison_run_id": run_id, "study_name": search.cfg["study_name"]}
    for arm, alias in ((comparison.best, "challenger"), (comparison.baseline, "baseline")):
        if alias == "baseline" and registry.alias_version(name, "baseline") is not None:
            continue
        lo, hi = result.ci_b if arm is comparison.best else result.ci_a
        value = best_trial.value if arm is comparison.best else _baseline_value(search)
        # the version's training config and data, so promotion can retrain it with other seeds
        config = {k: v for k, v in arm.config.as_params().items() if k != "seed"}
        tags = {**common, **config, "data": search.cfg["data"], "data_source": search.source.uri,
                "data_digest": search.train_split.digest, "test_accuracy_mean": np.mean(arm.accuracies),
                "test_accuracy_ci": f"{lo:.4f}..{hi:.4f}", "seed": comparison.seeds[arm.median_index],
                "seeds": seeds_text(comparison.seeds)}
        if value is not None:
            tags["val_accuracy"] = value
        version = registry.register(models[arm.name].model_uri, name, alias, tags)
        print(f"registered {name} version {version} as @{alias}")

def _baseline_value(search) -> float | None:
    """val_accuracy of the study's baseline trial; None if it was pruned or failed."""
    for t in search.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("baseline"):
            return t.value
    return None
