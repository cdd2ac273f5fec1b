"""``python -m legoexp.baseline`` (``mlflow run . -e baseline``): the lab notebook as one MLflow run.

Load the data, look at it, train the lab's MLP, test it, show a single and a batch prediction,
and log all of it to MLflow: params, per-epoch metrics, the dataset inputs, five charts under
``plots/``, the model as a pyfunc, and where the run's seconds went (``time_<part>_s``). Inputs are
read and checked before a run is started, so a bad option or file ends with a one-line error
(exit 2) and no run; a failure inside the run (a diverging fit too) ends it FAILED, never RUNNING.
The charts are drawn in a second process, forked before MXNet and MLflow load: it loads
matplotlib while this one trains, and draws while this one loads MLflow and logs.
"""

import argparse
import gc
import importlib
import multiprocessing
import os
import signal
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

from legoexp import config
from legoexp.errors import UserError
from legoexp.ops import faults, timings
from legoexp.ops.command import run_main

SETTINGS = config.settings("baseline")
SINGLE_INDEX = 25  # the lab predicts test image #25 on its own
BATCH_SIZE_SHOWN = 16  # ... and then a batch of 16


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m legoexp.baseline",
        description="Train the lab's MLP once and log params, metrics, charts and the model to MLflow.",
        epilog="Defaults come from conf/baseline.yaml; --config FILE overrides them; options override both. "
               "The tracking store is MLflow's (MLFLOW_TRACKING_URI, default sqlite:///mlflow.db).")
    config.add_options(p, "baseline")
    p.add_argument("--experiment-name", "--experiment_name",
                   help=f"{config.SETTINGS['experiment_name'].help} (default: 'legoexp')")
    return p.parse_args(argv)


def lab_figures(train_split, test_split, history, probabilities) -> dict:
    """The notebook's pictures, from arrays: data, learning curves, predictions, confusion."""
    from legoexp import plots

    i = min(SINGLE_INDEX, len(test_split) - 1)
    shown = slice(0, BATCH_SIZE_SHOWN)
    predicted = probabilities.argmax(axis=1)
    return {
        "training_images": plots.sample_grid(train_split.images, train_split.labels),
        "learning_curves": plots.learning_curves(history),
        "single_prediction": plots.single_prediction(
            test_split.images[i], probabilities[i], actual=int(test_split.labels[i]), index=i),
        "batch_prediction": plots.batch_prediction(
            test_split.images[shown], predicted[shown], test_split.labels[shown]),
        "confusion_matrix": plots.confusion_matrix(test_split.labels, predicted),
    }


_splits = ()  # in the chart process: (train split, test split), as the fork left them


def _keep_splits(train_split, test_split, parent: int) -> None:
    global _splits
    from legoexp.ops.proc import die_with

    die_with(parent)  # a main process killed outright cannot stop this one
    for signum in (signal.SIGINT, signal.SIGTERM):  # the main process's to handle; it stops this one
        signal.signal(signum, signal.SIG_IGN)
    _splits = (train_split, test_split)


def _draw_charts(history, probabilities, directory: str) -> float:
    """In the chart process: write the notebook's charts into ``directory``; the seconds it took."""
    started = time.perf_counter()
    for name, fig in lab_figures(*_splits, history, probabilities).items():
        fig.savefig(os.path.join(directory, f"{name}.png"))  # as mlflow.log_figure saves a figure
    return time.perf_counter() - started


def main(argv=None) -> int:
    # The collector finds nothing to free in this short process, yet walks ever more objects while
    # MXNet, MLflow and matplotlib load and the charts are drawn (docs/performance.md).
    gc.disable()
    args = parse_args(argv)
    cfg = config.resolve("baseline", SETTINGS, args.config, config.options(args, "baseline"))

    from legoexp.data import load_split, open_source

    source = open_source(cfg["data"])
    train_split, test_split = load_split(source, "train"), load_split(source, "test")
    # A fork, now: nothing is loaded yet whose threads a fork would not carry over (MXNet's, MLflow's).
    charts = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"),
                                 initializer=_keep_splits, initargs=(train_split, test_split, os.getpid()))
    try:
        charts.submit(importlib.import_module, "legoexp.plots")  # starts it; matplotlib loads meanwhile
        with tempfile.TemporaryDirectory(prefix="legoexp-baseline-") as directory:
            return _train_and_log(args, cfg, source, train_split, test_split, charts, directory)
    finally:
        charts.shutdown(cancel_futures=True)


def _train_and_log(args, cfg, source, train_split, test_split, charts, directory) -> int:
    from legoexp.ops.proc import load_mxnet_on_every_core

    load_mxnet_on_every_core()  # after the fork: the chart process needs no MXNet
    from legoexp.evaluate import evaluate
    from legoexp.train import Diverged, train

    train_config = config.TrainConfig(**{k: cfg[k] for k in config.HYPERPARAMETERS})
    timings.lap("startup")
    print(f"training on {len(train_split)} images from {source.uri} ({train_config})")

    def progress(epoch, metrics):
        print(f"  epoch {epoch:>3}/{train_config.epochs}  train_loss {metrics['train_loss']:.4f}  "
              f"train_accuracy {metrics['train_accuracy']:.4f}", flush=True)

    # Trained before the run starts, so that the charts are drawn while MLflow loads; a fit that
    # diverged still ends its run FAILED, with the reason, below.
    diverged = None
    try:
        with timings.training():
            result = train(train_config, train_split.images, train_split.labels, on_epoch=progress)
            evaluation = evaluate(result.net, test_split.images, test_split.labels)
        drawn = charts.submit(_draw_charts, result.history, evaluation.probabilities, directory)
    except Diverged as e:
        diverged = e
    timings.lap("fit")

    import mlflow

    from legoexp import tracking

    tracking.use_experiment(args.experiment_name)
    run_name = f"baseline-seed{train_config.seed}"
    with mlflow.start_run(run_name=run_name) as run, tracking.killed_on_interrupt():
        run_id = run.info.run_id
        mlflow.set_tags({"mlflow.runName": run_name, "legoexp.kind": "baseline"})
        tracking.log_params(run_id, tracking.run_params(train_config, cfg["data"], source, train_split))
        tracking.log_split(train_split, source)
        tracking.log_split(test_split, source)
        timings.lap("setup")
        if diverged:
            raise UserError(f"{diverged}: lr={train_config.lr} is too large for this data; try a smaller --lr")
        tracking.log_history(run_id, result.history)
        tracking.log_metrics(run_id, {"test_loss": evaluation.loss, "test_accuracy": evaluation.accuracy})
        faults.point("baseline.model")
        model = tracking.log_model(result.net, input_example=test_split.images[:2])
        timings.lap("model")
        drawing_s = drawn.result()
        mlflow.log_artifacts(directory, "plots")
        timings.lap("charts")
        # where the seconds went, and the chart process's own, spent beside this one's
        tracking.log_metrics(run_id, timings.metrics() | {"chart_process_s": drawing_s})
        experiment_id = run.info.experiment_id

    print(f"test_accuracy {evaluation.accuracy:.4f}  test_loss {evaluation.loss:.4f}  "
          f"({timings.since_start():.1f} s)")
    print(f"run {run_id} ({run_name}) in experiment {experiment_id}; model {model.model_uri}")
    print(f"see it: mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}  then open "
          f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}")
    return 0


if __name__ == "__main__":
    run_main(main)
