"""Everything legoexp writes to MLflow, in one vocabulary for the baseline, trials and comparisons.

Params use the training config's keys (``epochs``, ``lr``, ``batch_size``, ``hidden1``,
``hidden2``, ``seed``) plus ``data``, ``data_source`` and ``data_digest`` (the training split's
digest); metrics are ``train_loss`` / ``train_accuracy`` per epoch (step = epoch),
``val_accuracy`` for cross-validation and ``test_loss`` / ``test_accuracy`` at the end. Metrics
go in batches (one store transaction each). The model is logged by ``tracking.pyfunc``.
"""

import contextlib
import os
import time
import warnings
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from legoexp.config import TrainConfig
from legoexp.data import Source, Split
from legoexp.errors import UserError, first_line
from legoexp.ops import resources

DEFAULT_EXPERIMENT = "legoexp"
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # bars garble our progress lines
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # a line per run on a server


def use_experiment(name: str | None) -> None:
    """Select the experiment, unless ``mlflow run`` already started a run in the one it chose."""
    if "MLFLOW_RUN_ID" not in os.environ:
        mlflow.set_experiment(name or DEFAULT_EXPERIMENT)


def store_directory() -> Path:
    """The directory of a local tracking store (where the default Optuna journal goes)."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).parent.resolve()
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path).resolve()
    return Path.cwd()


def check_store() -> None:
    """Refuse a SQLite tracking store that does not exist, which MLflow would create empty."""
    for uri in {mlflow.get_tracking_uri(), mlflow.get_registry_uri()}:
        if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
            raise UserError(f"there is no tracking store at {uri}; run this where the experiment's mlflow.db "
                            "is, or set MLFLOW_TRACKING_URI")


def run_url(experiment_id: str, run_id: str) -> str:
    """Where the MLflow UI shows a run: the tracking server's own, or `mlflow ui`'s default address."""
    uri = mlflow.get_tracking_uri()
    ui = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{ui}/#/experiments/{experiment_id}/runs/{run_id}"


@contextlib.contextmanager
def killed_on_interrupt():
    """Within MLflow's ``with mlflow.start_run()``: Ctrl-C or SIGTERM ends the run KILLED, where MLflow
    would end it FAILED."""
    try:
        yield
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise


def run_exists(run_id: str) -> bool:
    """False for a run that does not exist or was deleted; a store that fails raises."""
    try:
        return MlflowClient().get_run(run_id).info.lifecycle_stage == "active"
    except mlflow.exceptions.MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


STORE_FAILURES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}


def store_failure(e: Exception, optuna_storage: str | None = None) -> Exception:
    """What to raise for an MLflow error: a write that ran out of room or was refused (a full disk, a
    read-only file system, permission denied: ``ops.resources``) becomes one line saying what, where and
    why; a store that failed otherwise (unreachable, a 5xx, a locked or broken database) one line naming
    it; anything else (a bug) is ``e`` itself. ``optuna_storage``: the study's, as logged, to name it."""
    shortage = resources.find(e, _places(optuna_storage))
    if shortage is not None:
        return shortage.error()
    if getattr(e, "error_code", None) not in STORE_FAILURES:
        return e
    return UserError(f"the tracking store {mlflow.get_tracking_uri()} failed ({first_line(e)[:300]}); when it works again, "
                     "rerun the same command to resume")


def _places(optuna_storage: str | None = None) -> resources.Places:
    """What this process writes to: the tracking store, the registry, and ``optuna_storage`` if given."""
    return resources.Places(mlflow.get_tracking_uri(), mlflow.get_registry_uri(), optuna_storage)


def provenance(data: str, source: Source, train: Split) -> dict:
    """Where a run's data came from: ``data`` as the user gave it, the source it named, and the digest of
    the training split (what reproduce, promote and a rerun check the data against)."""
    return {"data": data, "data_source": source.uri, "data_digest": train.digest}


def run_params(config: TrainConfig, data: str, source: Source, train: Split) -> dict:
    return {**config.as_params(), **provenance(data, source, train)}


def experiment_id(name: str, create: bool = False, launched: str | None = None) -> str | None:
    """The experiment of ``launched``, the run that ``mlflow run`` made (default: ``MLFLOW_RUN_ID``), else
    experiment ``name`` (made if ``create``; None if missing). Not ``mlflow.set_experiment``: no
    process-wide state changes behind a caller's back."""
    client = MlflowClient()
    launched = launched or os.environ.get("MLFLOW_RUN_ID")
    if launched:
        return client.get_run(launched).info.experiment_id
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name) if create else None
    return experiment.experiment_id


def log_params(run_id: str, params: dict) -> None:
    """Log ``params`` on a run. On the run that ``mlflow run`` made, the settings given as ``-P key=value``
    are logged already, as the user wrote them (``0.040``): params cannot change, so those are kept."""
    client = MlflowClient()
    if run_id == os.environ.get("MLFLOW_RUN_ID"):
        logged = client.get_run(run_id).data.params
        params = {k: v for k, v in params.items() if k not in logged}
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])


def set_tags(run_id: str, tags: dict) -> None:
    MlflowClient().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_metrics(run_id: str, metrics: dict[str, float], step: int = 0, tags: dict | None = None) -> None:
    """Metrics (and any ``tags``) in one store transaction."""
    now = int(time.time() * 1000)
    MlflowClient().log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()],
                             tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])


def log_history(run_id: str, history: dict[str, list[float]], steps=None) -> None:
    """Series of metrics in one batch; the i-th value of each at ``steps[i]`` (default: epochs 1, 2, ...)."""
    now = int(time.time() * 1000)
    metrics = [Metric(key, float(v), now, step) for key, values in history.items()
               for step, v in zip(steps or range(1, len(values) + 1), values)]
    MlflowClient().log_batch(run_id, metrics=metrics)


def log_split(split: Split, source: Source) -> None:
    """Record a split as an MLflow dataset input (name, digest, source), context = split name."""
    dataset_source = (CodeDatasetSource({"generator": "legoexp.data.synthetic", "data": source.uri})
                      if source.kind == "synthetic" else str(source.path(split.name)))
    with warnings.catch_warnings():  # MLflow registers its local-file source twice and says so
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_numpy(split.images, targets=split.labels, source=dataset_source,
                                         name=f"lego-{split.name}", digest=split.digest)
    mlflow.log_input(dataset, context="training" if split.name == "train" else "testing")


def log_figures(figures: dict, run_id: str | None = None) -> None:
    """Each figure as ``plots/<name>.png``, of run ``run_id`` (default: the active run)."""
    for name, fig in figures.items():
        if run_id is None:
            mlflow.log_figure(fig, f"plots/{name}.png")
        else:  # not through start_run(run_id): leaving it would end the run FINISHED
            MlflowClient().log_figure(run_id, fig, f"plots/{name}.png")
