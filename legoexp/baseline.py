"""``python -m legoexp.baseline`` (``mlflow run . -e baseline``): the lab notebook as one MLflow run.

Load the data, look at it, train the lab's MLP, test it, show a single and a batch prediction,
and log all of it to MLflow: params, per-epoch metrics, the dataset inputs, five charts under
``plots/`` and the model as a pyfunc. Inputs are read and checked before a run is started, so a
bad option or file ends with a one-line error (exit 2) and no run; a failure inside the run
ends it FAILED, never RUNNING.
"""

import argparse
import time

from legoexp import config
from legoexp.config import Setting, int_range, positive_float
from legoexp.errors import UserError, run_main

SETTINGS = {
    "data": Setting(str),
    "epochs": int_range(1, 10_000),
    "lr": positive_float(1e6),
    "batch_size": int_range(1, 1_000_000),
    "hidden1": int_range(1, 16_384),
    "hidden2": int_range(1, 16_384),
    "seed": int_range(0, 2**31 - 1),
}
SINGLE_INDEX = 25  # the lab predicts test image #25 on its own
BATCH_SIZE_SHOWN = 16  # ... and then a batch of 16


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m legoexp.baseline",
        description="Train the lab's MLP once and log params, metrics, charts and the model to MLflow.",
        epilog="Defaults come from conf/baseline.yaml; --config FILE overrides them; options override both. "
               "The tracking store is MLflow's (MLFLOW_TRACKING_URI, default sqlite:///mlflow.db).")
    p.add_argument("--data", help="'synthetic' (built-in generated set), 'synthetic:SEED', a directory "
                                  "holding the lab's lego-simple-mx-train/-test, or train.npz + test.npz")
    for key, kind in (("epochs", int), ("lr", float), ("batch_size", int),
                      ("hidden1", int), ("hidden2", int), ("seed", int)):
        p.add_argument(f"--{key.replace('_', '-')}", dest=key, type=kind, help="default: conf/baseline.yaml")
    p.add_argument("--config", metavar="FILE", help="an experiments/*.yaml file of overrides")
    p.add_argument("--experiment-name", help="MLflow experiment (default 'legoexp'; ignored under "
                                             "`mlflow run`, which picks its own)")
    return p.parse_args(argv)


def lab_figures(train_split, test_split, history, evaluation) -> dict:
    """The notebook's pictures, from arrays: data, learning curves, predictions, confusion."""
    from legoexp import plots

    i = min(SINGLE_INDEX, len(test_split) - 1)
    shown = slice(0, BATCH_SIZE_SHOWN)
    return {
        "training_images": plots.sample_grid(train_split.images, train_split.labels),
        "learning_curves": plots.learning_curves(history),
        "single_prediction": plots.single_prediction(
            test_split.images[i], evaluation.probabilities[i], actual=int(test_split.labels[i]), index=i),
        "batch_prediction": plots.batch_prediction(
            test_split.images[shown], evaluation.predicted[shown], test_split.labels[shown]),
        "confusion_matrix": plots.confusion_matrix(test_split.labels, evaluation.predicted),
    }


def main(argv=None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    options = {k: getattr(args, k) for k in SETTINGS}
    cfg = config.resolve("baseline", SETTINGS, args.config, options)

    from legoexp.data import load_split, open_source
    from legoexp.train import Diverged, TrainConfig, train

    source = open_source(cfg["data"])
    train_split, test_split = load_split(source, "train"), load_split(source, "test")
    train_config = TrainConfig(**{k: v for k, v in cfg.items() if k != "data"})

    import mlflow

    from legoexp import tracking
    from legoexp.evaluate import evaluate

    tracking.use_experiment(args.experiment_name)
    run_name = f"baseline-seed{train_config.seed}"
    with mlflow.start_run(run_name=run_name) as run:
        run_id = run.info.run_id
        mlflow.set_tags({"mlflow.runName": run_name, "legoexp.kind": "baseline"})
        tracking.log_params(run_id, tracking.run_params(train_config, cfg["data"], source, train_split))
        tracking.log_split(train_split, source)
        tracking.log_split(test_split, source)
        print(f"training on {len(train_split)} images from {source.uri} ({train_config})")

        def progress(epoch, metrics):
            print(f"  epoch {epoch:>3}/{train_config.epochs}  train_loss {metrics['train_loss']:.4f}  "
                  f"train_accuracy {metrics['train_accuracy']:.4f}", flush=True)

        try:
            result = train(train_config, train_split.images, train_split.labels, on_epoch=progress)
        except Diverged as e:
            raise UserError(f"{e}: lr={train_config.lr} is too large for this data; try a smaller --lr") from None
        evaluation = evaluate(result.net, test_split.images, test_split.labels)
        tracking.log_history(run_id, result.history)
        tracking.log_metrics(run_id, {"test_loss": evaluation.loss, "test_accuracy": evaluation.accuracy})
        tracking.log_figures(lab_figures(train_split, test_split, result.history, evaluation))
        model = tracking.log_model(result.net, input_example=test_split.images[:2])
        experiment_id = run.info.experiment_id

    print(f"test_accuracy {evaluation.accuracy:.4f}  test_loss {evaluation.loss:.4f}  "
          f"({time.perf_counter() - started:.1f} s)")
    print(f"run {run_id} ({run_name}) in experiment {experiment_id}; model {model.model_uri}")
    print(f"see it: mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}  then open "
          f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}")
    return 0


if __name__ == "__main__":
    run_main(main)
