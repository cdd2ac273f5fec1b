"""Everything legoexp writes to MLflow and reads back from it, in one vocabulary.

``runs``: the experiment, a run's params, metrics, tags, dataset inputs and figures, the store's
location and its failures. ``pyfunc``: the logged model, ``LegoClassifier``, an MLflow pyfunc that
takes raw lab images, and ``log_model``. Callers use the names below: ``tracking.log_params(...)``.
"""

from legoexp.tracking.pyfunc import log_model
from legoexp.tracking.runs import (
                                   DEFAULT_EXPERIMENT,
                                   check_store,
                                   experiment_id,
    killed_on_interrupt,
                                   log_figures,
                                   log_history,
                                   log_metrics,
                                   log_params,
                                   log_split,
                                   provenance,
                                   run_exists,
                                   run_params,
                                   run_url,
                                   set_tags,
                                   store_directory,
                                   store_failure,
                                   use_experiment,
)

__all__ = [
    "DEFAULT_EXPERIMENT", "check_store", "experiment_id", "killed_on_interrupt", "log_figures", "log_history", "log_metrics",
    "log_model", "log_params", "log_split", "provenance", "run_exists", "run_params", "run_url", "set_tags",
    "store_directory", "store_failure", "use_experiment",
]
