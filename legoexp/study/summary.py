"""The study's summary on its parent run: the best trial's params and score, and Optuna's figures.

Logged once the search has its trials, before the comparison; a rerun logs it again (a resumed
study may have a new best), which is why the best params are tags, not params.
"""

import sys

import numpy as np
import optuna
from optuna.trial import TrialState

from legoexp import plots, tracking
from legoexp.ops import faults
from legoexp.study import design


def log_study(study: optuna.Study, parent_id: str) -> None:
    """Best params and val_accuracy, and Optuna's plots, on the parent run."""
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    best = study.best_trial
    # tags, not params: a resumed study with more trials may find a new best
    tracking.set_tags(parent_id, {f"best_{k}": v for k, v in best.params.items()} |
                      {"best_trial": best.number})
    tracking.log_metrics(parent_id, {"val_accuracy": best.value,
                                          "finished_trials": design.count_finished(study)})
    values = [t.value for t in study.get_trials(states=(TrialState.COMPLETE,))]
    figures = {"expected_best_val_accuracy": plots.expected_max_curve(values)}
    drawers = {"optimization_history": ovm.plot_optimization_history,
               "param_importances": ovm.plot_param_importances,
               "parallel_coordinate": ovm.plot_parallel_coordinate, "slice": ovm.plot_slice}
    for name, draw in drawers.items():
        try:
            axes = draw(study)
        except (ValueError, RuntimeError) as e:  # e.g. importances need 2+ complete trials
            print(f"skipped plot {name}: {e}", file=sys.stderr)
            continue
        figures[name] = np.ravel(axes)[0].figure
    faults.point("report.figures")
    tracking.log_figures(figures, run_id=parent_id)  # the parent stays RUNNING until the sweep ends
    plt.close("all")
