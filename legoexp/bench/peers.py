"""What legoexp is measured against: the lab's own loop, the same net in NumPy, and the straightforward sweep.

``lab_loop`` is the notebook's training loop as written there (Gluon DataLoader with ToTensor +
Normalize per batch, not hybridized, ``Trainer.step`` and a metric update per batch; its shuffle
is NumPy's global generator), and ``lab_accuracy`` its way of scoring. ``numpy_peer`` is the same
MLP, data, batch size and SGD written directly in NumPy. ``python -m legoexp.bench.peers`` is the sweep
a user would write without legoexp, from optuna-examples' MLflow pattern: seeded TPE on an
in-memory study, one ``mlflow.start_run`` per trial, the lab's loop on each of the stratified
folds, no pruning, the same search space. ``python -m legoexp.bench`` times all of them.
"""

import argparse

import numpy as np


def lab_loop(images: np.ndarray, labels: np.ndarray, epochs: int = 10, batch_size: int = 34, lr: float = 0.04,
             hidden1: int = 128, hidden2: int = 64, seed: int = 42):
    """The notebook's training loop; returns the trained net."""
    import mxnet as mx
    from mxnet import autograd, gluon

    from legoexp.model import build_net

    mx.random.seed(seed)
    loader = gluon.data.DataLoader(_lab_dataset(images, labels), batch_size=batch_size, shuffle=True)
    net = build_net(hidden1, hidden2)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": lr})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    metric = mx.metric.Accuracy()
    for _ in range(epochs):
        metric.reset()
        for data, label in loader:
            with autograd.record():
                output = net(data)
                loss = loss_fn(output, label)
            loss.backward()
            trainer.step(data.shape[0])
            metric.update(label, output)
    mx.nd.waitall()
    return net


def lab_loop_times(data: str, repeat: int) -> list[float]:
    """``bench.commands.times`` of ``lab_loop`` on ``data``'s training split, in this process: the bench
    runs it in a fresh one, where MXNet has its own default threads, as in the notebook."""
    from legoexp.bench.commands import times
    from legoexp.data import load_split, open_source

    split = load_split(open_source(data), "train")
    return times(lambda: lab_loop(split.images, split.labels), repeat)


def lab_accuracy(net, images: np.ndarray, labels: np.ndarray, batch_size: int = 34) -> float:
    """The notebook's scoring: batches through the DataLoader, an Accuracy metric."""
    import mxnet as mx
    from mxnet import gluon

    metric = mx.metric.Accuracy()
    for data, label in gluon.data.DataLoader(_lab_dataset(images, labels), batch_size=batch_size):
        metric.update(label, net(data))
    return float(metric.get()[1])


def _lab_dataset(images: np.ndarray, labels: np.ndarray):
    import mxnet as mx
    from mxnet import gluon
    from mxnet.gluon.data.vision import transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(0.13, 0.31)])
    dataset = gluon.data.ArrayDataset(mx.nd.array(images.reshape(-1, 48, 48, 1), dtype="uint8"),
                                      labels.astype("float32"))
    return dataset.transform_first(transform)


def numpy_peer(images: np.ndarray, labels: np.ndarray, epochs: int = 10, batch_size: int = 34,
               lr: float = 0.04, seed: int = 42) -> float:
    """The same MLP, data, batch size and SGD in NumPy (forward, backward, update); returns the last loss."""
    rng = np.random.default_rng(seed)
    x = ((images.reshape(len(images), -1).astype(np.float32) / 255 - 0.13) / 0.31).astype(np.float32)
    sizes = [(2304, 128), (128, 64), (64, 10)]
    ws = [rng.uniform(-1, 1, s).astype(np.float32) * np.float32(np.sqrt(6 / sum(s))) for s in sizes]
    bs = [np.zeros(s[1], np.float32) for s in sizes]
    loss = 0.0
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            xb, yb, m = x[idx], labels[idx], len(idx)
            h1 = xb @ ws[0] + bs[0]
            a1 = np.maximum(h1, 0)
            h2 = a1 @ ws[1] + bs[1]
            a2 = np.maximum(h2, 0)
            z = a2 @ ws[2] + bs[2]
            z -= z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            loss = float(-np.log(p[np.arange(m), yb]).mean())
            dz = p
            dz[np.arange(m), yb] -= 1
            dz /= m
            dh2 = (dz @ ws[2].T) * (h2 > 0)
            dh1 = (dh2 @ ws[1].T) * (h1 > 0)
            for w, b, a, d in ((ws[2], bs[2], a2, dz), (ws[1], bs[1], a1, dh2), (ws[0], bs[0], xb, dh1)):
                w -= lr * (a.T @ d)
                b -= lr * d.sum(axis=0)
    return loss


def peer_sweep(data: str, trials: int, folds: int, epochs: int, seed: int) -> float:
    """The straightforward Optuna + MLflow sweep; returns the best mean validation accuracy."""
    import mlflow
    import optuna
    from sklearn.model_selection import StratifiedKFold

    from legoexp.data import load_split, open_source
    from legoexp.study import design

    split = load_split(open_source(data), "train")
    space = design.load_space()
    mlflow.set_experiment("peer-sweep")
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(split.images, split.labels))

    def objective(trial: optuna.Trial) -> float:
        params = design.suggest(trial, space)
        with mlflow.start_run(run_name=f"trial-{trial.number}"):
            mlflow.log_params(params)
            accuracies = []
            for k, (fit, val) in enumerate(splits):
                net = lab_loop(split.images[fit], split.labels[fit], epochs=epochs, seed=seed, **params)
                accuracies.append(lab_accuracy(net, split.images[val], split.labels[val]))
                mlflow.log_metric("val_accuracy_fold", accuracies[-1], step=k)
            mlflow.log_metric("val_accuracy", float(np.mean(accuracies)))
        return float(np.mean(accuracies))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=trials)
    return study.best_value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m legoexp.bench.peers", description="The straightforward sweep "
                                "(what the benchmark's --peer-sweep times): TPE, a run per trial, the lab's loop.")
    p.add_argument("--data", default="synthetic")
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    best = peer_sweep(args.data, args.trials, args.folds, args.epochs, args.seed)
    print(f"best val_accuracy {best:.4f}")
    return 0


if __name__ == "__main__":
    from legoexp.ops.command import run_main

    run_main(main)
