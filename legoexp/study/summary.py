"""The study's summary on its parent run: the best trial's params and score, and the figures.

Logged once the search has its trials, before the comparison; a rerun logs it again (a resumed
study may have a new best), which is why the best params are tags, not params. The figures are
Optuna's (on CV accuracy, in a multi-objective study too) and the study's accuracy against size
(``plots.pareto_front``); a multi-objective study's Pareto front members are tagged
``pareto_front`` = true on their trial runs.
"""

import sys

import numpy as np
import optuna
from optuna.trial import TrialState

from legoexp import plots, tracking
from legoexp.ops import faults
from legoexp.study import design


def log_study(study: optuna.Study, parent_id: str, experiment_id: str) -> None:
    """Best params and val_accuracy, and the plots, on the parent run."""
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    multi = len(study.directions) > 1
    front = study.best_trials if multi else _front(complete)
    best = max(complete, key=lambda t: (design.accuracy(t), -t.number))
    # tags, not params: a resumed study with more trials may find a new best
    tracking.set_tags(parent_id, {f"best_{k}": v for k, v in best.params.items()} |
                      {"best_trial": best.number})
    tracking.log_metrics(parent_id, {"val_accuracy": design.accuracy(best),
                                          "finished_trials": design.count_finished(study)})
    values = [design.accuracy(t) for t in sorted(complete, key=lambda t: t.number)]
    figures = {"expected_best_val_accuracy": plots.expected_max_curve(values),
               "pareto_front": plots.pareto_front(_points(complete), {t.number for t in front}, multi)}
    if multi:
        _tag_front(study, front, experiment_id)
    target = {"target": design.accuracy, "target_name": "val_accuracy"} if multi else {}
    # importances of a target Optuna cannot tell the direction of: fANOVA's, which has none
    importances = {"evaluator": optuna.importance.FanovaImportanceEvaluator(seed=0)} if multi else {}
    drawers = {"optimization_history": ovm.plot_optimization_history,
               "param_importances": ovm.plot_param_importances,
               "parallel_coordinate": ovm.plot_parallel_coordinate, "slice": ovm.plot_slice}
    for name, draw in drawers.items():
        try:
            axes = draw(study, **target, **(importances if name == "param_importances" else {}))
        except (ValueError, RuntimeError) as e:  # e.g. importances need 2+ complete trials
            print(f"skipped plot {name}: {e}", file=sys.stderr)
            continue
        figures[name] = np.ravel(axes)[0].figure
    faults.point("report.figures")
    tracking.log_figures(figures, run_id=parent_id)  # the parent stays RUNNING until the sweep ends
    plt.close("all")


def _points(complete: list) -> list[dict]:
    """Each complete trial's size, CV accuracy and the spread of its folds."""
    points = []
    for t in complete:
        folds = design.fold_accuracies(t)
        points.append({"number": t.number, "params": design.param_count(t.params), "accuracy": design.accuracy(t),
                       "std": float(np.std(folds, ddof=1)) if len(folds) > 1 else 0.0})
    return points


def _front(complete: list) -> list:
    """The complete trials that no other beats on both CV accuracy (higher) and parameter count (lower)."""
    points = {p["number"]: p for p in _points(complete)}

    def dominated(p):
        return any(q["accuracy"] >= p["accuracy"] and q["params"] <= p["params"] and
                   (q["accuracy"] > p["accuracy"] or q["params"] < p["params"]) for q in points.values())
    return [t for t in complete if not dominated(points[t.number])]


def _tag_front(study: optuna.Study, front: list, experiment_id: str) -> None:
    """``pareto_front`` = true on the front members' runs; false on runs a resumed study's front left."""
    from mlflow.tracking import MlflowClient

    members = {t.user_attrs.get("mlflow_run_id") for t in front} - {None}
    tagged = MlflowClient().search_runs([experiment_id], f"tags.`legoexp.study` = '{study.study_name}' and "
                                        "tags.`legoexp.kind` = 'trial' and tags.pareto_front = 'true'")
    for run in tagged:
        if run.info.run_id not in members:
            tracking.set_tags(run.info.run_id, {"pareto_front": "false"})
    for run_id in members:
        tracking.set_tags(run_id, {"pareto_front": "true"})
