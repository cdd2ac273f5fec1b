"""The practised user's sweep: the study legoexp runs, written with documented, off-the-shelf parts only.

``python -m legoexp.bench.skilled`` is the stronger peer that ``python -m legoexp.bench --peer-sweep``
times beside the straightforward one (``legoexp.bench.peers``). It runs the same study as
``python -m legoexp.sweep``'s search: the same seed, the same stratified folds
(``StratifiedKFold(folds, shuffle=True, random_state=seed)``), the same search space
(``conf/search_space.yaml`` through ``legoexp.study.design``), the same trial count, the lab's
baseline as trial 0. It gives that study every chance the tools' documented features offer:

- Gluon fits on inputs normalised once, the net of ``legoexp.model.build_net`` (Xavier init, seeded)
  and its loss hybridized with ``static_alloc`` and ``static_shape``, batches sliced from the
  epoch's shuffled array, ``gluon.Trainer`` SGD at the trial's learning rate;
- seeded TPE (multivariate, constant liar) with the baseline enqueued, and a ``WilcoxonPruner``
  fed each fold's accuracy (``trial.report`` per fold, ``should_prune``);
- a ``JournalStorage`` on a ``JournalFileBackend`` shared by 2 processes started with the spawn
  context and ``OMP_NUM_THREADS=1``, each running ``study.optimize`` on its share of the trials so
  that the study ends with exactly ``--trials`` finished (complete or pruned) trials;
- MLflow runs nested under one parent run, made before the workers start: each trial a child run
  with ``mlflow.log_params`` and its folds' accuracies and mean in one ``mlflow.log_metrics`` batch.

It does not do what the sweep does after the search: no comparison on the test split, no figures,
no model logging or registration; nor what it does for safety: no heartbeats, no resuming, no
clean-up of a killed worker's trial. Each worker's sampler is seeded with ``seed + its index``
(two samplers on one seed would propose the same points), so the study is seeded but, with two
processes, not reproducible trial by trial. Its journal is a temporary file unless ``--journal``
names one; its tracking store is MLflow's (``MLFLOW_TRACKING_URI``).
"""

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

EXPERIMENT = "skilled-peer"
STUDY = "skilled-peer"


def fold_accuracy(x: np.ndarray, y: np.ndarray, fit: np.ndarray, val: np.ndarray, params: dict,
                  epochs: int, seed: int) -> float:
    """Train a hybridized Gluon net on the normalised rows ``fit``; its accuracy on the rows ``val``."""
    from mxnet import autograd, gluon, nd

    from legoexp.model import build_net

    net = build_net(params["hidden1"], params["hidden2"], seed=seed)
    net.hybridize(static_alloc=True, static_shape=True)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    loss_fn.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": params["lr"]})
    x_fit, y_fit, batch = x[fit], y[fit].astype(np.float32), params["batch_size"]
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(fit))
        xs, ys = nd.array(x_fit[order]), nd.array(y_fit[order])
        for start in range(0, len(fit), batch):
            xb, yb = xs[start:start + batch], ys[start:start + batch]
            with autograd.record():
                loss = loss_fn(net(xb), yb)
            loss.backward()
            trainer.step(xb.shape[0])
    predicted = net(nd.array(x[val])).argmax(axis=1).asnumpy()
    return float((predicted == y[val]).mean())


def _worker(index: int, n_trials: int, args: argparse.Namespace, journal: str, parent_id: str,
            experiment_id: str) -> None:
    """One process of the study: ``n_trials`` trials through ``study.optimize``, each an MLflow child run."""
    import mlflow
    import optuna
    from sklearn.model_selection import StratifiedKFold

    from legoexp.data import load_split, open_source
    from legoexp.model import normalised
    from legoexp.study import design

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    split = load_split(open_source(args.data), "train")
    x, y = normalised(split.images), split.labels
    folds = list(StratifiedKFold(args.folds, shuffle=True, random_state=args.seed).split(x, y))
    space = design.load_space()
    study = optuna.load_study(study_name=STUDY, storage=_storage(journal), sampler=_sampler(args.seed + index),
                              pruner=_pruner())

    def objective(trial: optuna.Trial) -> float:
        params = design.suggest(trial, space)
        trial.set_user_attr("pid", os.getpid())
        accuracies, pruned = [], False
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"trial-{trial.number}",
                              parent_run_id=parent_id, tags={"trial_number": str(trial.number)}):
            mlflow.log_params(params)
            for k, (fit, val) in enumerate(folds):
                accuracies.append(fold_accuracy(x, y, fit, val, params, args.epochs, args.seed))
                trial.report(accuracies[-1], k)
                if trial.should_prune():
                    pruned = True
                    break
            metrics = {f"val_accuracy_fold{k}": a for k, a in enumerate(accuracies)}
            mlflow.log_metrics(metrics | ({} if pruned else {"val_accuracy": float(np.mean(accuracies))}))
        if pruned:  # raised outside the run: inside, MLflow would end it FAILED
            raise optuna.TrialPruned(f"pruned after fold {len(accuracies)}")
        return float(np.mean(accuracies))

    study.optimize(objective, n_trials=n_trials)


def _storage(journal: str):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(journal))


def _sampler(seed: int):
    import optuna

    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)


def _pruner():
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # WilcoxonPruner's
    return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=2)  # as legoexp's study


def shares(trials: int, processes: int) -> list[int]:
    """Trials for each process, adding up to ``trials``: each process's ``optimize`` stops at its share."""
    return [trials // processes + (i < trials % processes) for i in range(processes)]


def skilled_sweep(args: argparse.Namespace, journal: str) -> float:
    """The study in ``journal``, its parent run, its workers; returns the best mean validation accuracy."""
    import multiprocessing

    import mlflow
    import optuna

    from legoexp import config
    from legoexp.data import open_source

    open_source(args.data)  # a bad --data is refused here, once, not by every worker
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    baseline = {k: config.defaults("baseline")[k] for k in config.SEARCHED}
    study = optuna.create_study(study_name=STUDY, storage=_storage(journal), direction="maximize",
                                sampler=_sampler(args.seed), pruner=_pruner())
    study.enqueue_trial(baseline, user_attrs={"baseline": True})
    experiment_id = mlflow.set_experiment(EXPERIMENT).experiment_id
    os.environ["OMP_NUM_THREADS"] = "1"  # the spawned workers' MXNet and BLAS: one thread each
    with mlflow.start_run(run_name="skilled-peer") as parent:
        mlflow.log_params({"trials": args.trials, "folds": args.folds, "epochs": args.epochs, "seed": args.seed,
                           "processes": args.processes})
        spawn = multiprocessing.get_context("spawn")
        workers = [spawn.Process(target=_worker, args=(i, n, args, journal, parent.info.run_id, experiment_id))
                   for i, n in enumerate(shares(args.trials, args.processes)) if n]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        failed = [w.exitcode for w in workers if w.exitcode != 0]
        if failed:
            raise RuntimeError(f"skilled peer: {len(failed)} worker(s) failed (exit codes {failed}); see above")
        mlflow.log_metric("best_val_accuracy", study.best_value)
    return study.best_value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m legoexp.bench.skilled", description="The practised user's sweep "
                                "(what the benchmark's --peer-sweep times beside the straightforward one): "
                                "hybridized Gluon, TPE, Wilcoxon pruning, a journal shared by 2 processes.")
    p.add_argument("--data", default="synthetic")
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--journal", help="the study's journal file, which must not hold it yet "
                                     "(default: a temporary file, removed at the end)")
    args = p.parse_args(argv)
    if args.journal:
        best = skilled_sweep(args, args.journal)
    else:
        with tempfile.TemporaryDirectory() as directory:
            best = skilled_sweep(args, str(Path(directory) / "skilled-peer.journal"))
    print(f"best val_accuracy {best:.4f}")
    return 0


if __name__ == "__main__":
    from legoexp.ops.command import run_main

    run_main(main)
