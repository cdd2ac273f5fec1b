"""``python -m legoexp.reproduce RUN``: re-run a logged baseline or trial run and compare its metrics.

RUN is a run id, or a run's name for the latest run of that name. The run's params give the
training config and the data. The data must still be what the run saw (the training split's
digest against the logged ``data_digest``, and for a baseline the test split's against its
``lego-test`` dataset input), or the command refuses. A baseline run is retrained with the one
``train`` function and scored by ``evaluate`` on the test split; a trial run is re-scored on the
same stratified folds of the training split as the sweep made them. Every logged metric value
is printed beside its reproduction and compared exactly: exit 0 when all are IDENTICAL, 1 when
any is DIFFERENT. Nothing is logged; the tracking store is only read.
"""

import argparse
import re
import sys
from functools import partial

import numpy as np

from legoexp.config import HYPERPARAMETERS, SETTINGS, TrainConfig, read_config
from legoexp.errors import DataError, UserError
from legoexp.ops.command import run_main
from legoexp.study.folds import fold_accuracy, fold_indices

BASELINE_KEYS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
FOLD = "val_accuracy_fold"  # + k: a trial's accuracy on fold k
RUN_ID = re.compile(r"[0-9a-f]{32}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m legoexp.reproduce",
        description="Re-run a logged baseline or trial run from its params and data, and say whether every "
                    "logged metric comes out IDENTICAL (exit 0) or DIFFERENT (exit 1).",
        epilog="It refuses (exit 2) when the data now at the run's data source differs from the data the "
               "run logged (data_digest). It logs nothing: no new run is made, the tracking store "
               "(MLFLOW_TRACKING_URI, default sqlite:///mlflow.db) is only read.")
    p.add_argument("run_id", metavar="RUN",
                   help="the MLflow run id of a baseline run or a sweep's trial run, or its name (baseline-seed42, "
                        "trial-003: the latest run of that name)")
    return p.parse_args(argv)


def read_run(ref: str):
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from legoexp.access.rules import refusal
    from legoexp.tracking import check_store

    check_store()
    client = MlflowClient()
    missing = (f"run {ref}: not found in the tracking store {mlflow.get_tracking_uri()}; expected a run id or a "
               "run's name")
    try:
        run = client.get_run(ref) if RUN_ID.fullmatch(ref) else _latest_named(client, ref)
    except MlflowException as e:
        raise refusal(e, f"read run {ref}") or UserError(missing) from None
    if run is None:
        raise UserError(missing)
    kind = run.data.tags.get("legoexp.kind")
    if kind not in ("baseline", "trial"):
        raise UserError(f"run {run.info.run_id} ({run.info.run_name}) is "
                        f"{'a ' + kind if kind else 'not a legoexp'} run; expected a baseline run or a sweep's trial run")
    return run


def _latest_named(client, name: str):
    """The latest run called ``name`` in any experiment, or None."""
    if "'" in name:  # not in any name legoexp gives, and it would end the filter's quoted string
        return None
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, f"attributes.run_name = '{name}'", max_results=1,
                              order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def train_config(run) -> TrainConfig:
    params = run.data.params
    for key in HYPERPARAMETERS:
        try:
            read_config(params, keys=[key])
        except (KeyError, ValueError):
            raise UserError(f"run {run.info.run_id}: param {key}={params.get(key)!r}; expected a logged "
                            f"{SETTINGS[key].kind.__name__}") from None
    return TrainConfig(**read_config(params))


def load_checked(run, split: str):
    """The split now at the run's data source, refused unless its digest is the logged one."""
    from legoexp.data import load_split, open_source

    params = run.data.params
    spec = params.get("data_source") or params.get("data")
    if spec is None or "data_digest" not in params:
        raise UserError(f"run {run.info.run_id}: no data / data_digest params; expected a legoexp run")
    data = load_split(open_source(spec), split)
    inputs = {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}
    logged = params["data_digest"] if split == "train" else inputs.get("lego-test")
    if logged is not None and data.digest != logged:
        raise DataError(f"{data.where}: the {split} split now has digest {data.digest}, but run "
                        f"{run.info.run_id} logged {logged}; the data changed since the run, so it cannot be "
                        "reproduced")
    return data


def reproduce_baseline(config, train_split, test_split) -> dict:
    from legoexp.evaluate import evaluate
    from legoexp.train import train

    result = train(config, train_split.images, train_split.labels)
    evaluation = evaluate(result.net, test_split.images, test_split.labels)
    metrics = {key: dict(enumerate(values, start=1)) for key, values in result.history.items()}
    return metrics | {"test_loss": {0: evaluation.loss}, "test_accuracy": {0: evaluation.accuracy}}


def reproduce_trial(config, split, folds: int, logged: dict, failed: bool) -> dict:
    """Fold accuracies for as many folds as the trial logged (one more if it failed in the next),
    and ``val_accuracy`` if it finished."""
    from legoexp.train import Diverged

    done = sum(key.startswith(FOLD) for key in logged) + failed
    metrics, accuracies = {}, []
    for k, (fit_idx, val_idx) in enumerate(fold_indices(split.labels, folds, config.seed)[:done]):
        try:
            accuracies.append(fold_accuracy(config, split.images, split.labels, fit_idx, val_idx))
        except Diverged as e:
            metrics["fail_reason"] = {0: str(e)}
            break
        metrics[f"{FOLD}{k}"] = {0: accuracies[-1]}
    if "val_accuracy" in logged:
        metrics["val_accuracy"] = {0: float(np.mean(accuracies))}
    return metrics


def logged_values(run) -> dict:
    """The run's metrics as {key: {step: value}}, and a failed trial's ``fail_reason`` tag."""
    from mlflow.tracking import MlflowClient

    if run.data.tags["legoexp.kind"] == "baseline":
        keys = BASELINE_KEYS
    else:
        folds = [key for key in run.data.metrics if key.startswith(FOLD)]
        keys = [*sorted(folds, key=lambda key: int(key[len(FOLD):])), "val_accuracy"]
    client = MlflowClient()
    values = {key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
              for key in keys if key in run.data.metrics}
    if failed_trial(run):
        values["fail_reason"] = {0: run.data.tags["fail_reason"]}
    if not values:
        raise UserError(f"run {run.info.run_id} ({run.info.run_name}, {run.info.status}) has no logged metrics "
                        "to reproduce")
    return values


def failed_trial(run) -> bool:
    tags = run.data.tags
    return tags["legoexp.kind"] == "trial" and tags.get("state") == "failed" and "fail_reason" in tags


def folds_param(run) -> int:
    try:
        return int(run.data.params["folds"])
    except (KeyError, ValueError):
        raise UserError(f"run {run.info.run_id}: no integer param 'folds'; expected a sweep's trial run") from None


def compare(logged: dict, reproduced: dict) -> int:
    """Print every logged value beside its reproduction; return how many differ."""
    print(f"{'metric':<20} {'step':>4}  {'logged':>22}  {'reproduced':>22}")
    differ = 0
    for key, series in logged.items():
        for step, value in sorted(series.items()):
            again = reproduced.get(key, {}).get(step)
            same = again == value
            differ += not same
            shown = "-" if again is None else repr(again)
            print(f"{key:<20} {step:>4}  {value!r:>22}  {shown:>22}  {'IDENTICAL' if same else 'DIFFERENT'}")
    return differ


def main(argv=None) -> int:
    args = parse_args(argv)
    run = read_run(args.run_id)
    kind, config, logged = run.data.tags["legoexp.kind"], train_config(run), logged_values(run)
    train_split = load_checked(run, "train")  # the data is checked before anything is trained
    if kind == "baseline":
        reproduce = partial(reproduce_baseline, config, train_split, load_checked(run, "test"))
    else:
        reproduce = partial(reproduce_trial, config, train_split, folds_param(run), logged, failed_trial(run))
    print(f"reproducing {kind} run {run.info.run_id} ({run.info.run_name}) with {config} on {train_split.where}",
          file=sys.stderr)

    from legoexp.train import Diverged

    try:
        reproduced = reproduce()
    except Diverged as e:  # a baseline that diverges logs no metrics, so the logged one did not
        print(f"DIFFERENT: the reproduction's {e}, the logged run finished")
        return 1
    differ = compare(logged, reproduced)
    total = sum(map(len, logged.values()))
    if differ:
        print(f"DIFFERENT: {differ} of {total} logged values differ")
        return 1
    print(f"IDENTICAL: all {total} logged values reproduced exactly")
    return 0


if __name__ == "__main__":
    run_main(main)
