"""The one training function: every entry point (baseline, sweep trials, comparisons) calls ``train``.

It does what the lab's loop does, faster and reproducibly: images are normalised once
((x/255 - 0.13)/0.31) instead of per batch; each epoch's shuffle comes from a NumPy generator
seeded with the run's seed (the lab's DataLoader used the unseeded global one); the network,
softmax cross-entropy and the batch statistics run as one hybridized graph with static memory;
SGD updates each parameter with one ``sgd_update`` call at the lab's ``step(batch_size)`` scaling
(the same arithmetic as Gluon's Trainer without its per-step Python bookkeeping); the loss and
accuracy are read back once per epoch, not per batch. The same config and data give the same
numbers in any process. A non-finite loss stops training at that epoch with ``Diverged``.
"""

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from mxnet import autograd, gluon, nd

from legoexp.model import build_net

MEAN, STD = 0.13, 0.31  # the lab's Normalize(0.13, 0.31)


@dataclass(frozen=True)
class TrainConfig:
    """The hyperparameters of one fit; defaults are the lab's."""

    epochs: int = 10
    lr: float = 0.04
    batch_size: int = 34
    hidden1: int = 128
    hidden2: int = 64
    seed: int = 42

    def as_params(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    net: gluon.nn.HybridSequential
    history: dict[str, list[float]]  # "train_loss", "train_accuracy": one value per epoch


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, loss: float):
        super().__init__(epoch, loss)  # args that rebuild it, so it crosses process boundaries
        self.epoch, self.loss = epoch, loss

    def __str__(self) -> str:
        return f"training loss became {self.loss} at epoch {self.epoch}"


EpochCallback = Callable[[int, dict[str, float]], None]


def normalise(images: np.ndarray) -> nd.NDArray:
    """uint8 images (N, 48, 48[, 1]) -> float32 (N, 2304), as the lab's ToTensor + Normalize."""
    x = images.reshape(len(images), -1).astype(np.float32)
    return nd.array((x / np.float32(255.0) - np.float32(MEAN)) / np.float32(STD), dtype="float32")


class _TrainStep(gluon.HybridBlock):
    """Forward, per-sample loss, and the batch's (loss sum, correct count) in one graph.

    The input is already flat (batch, 2304), so the net's Flatten (a copy here) is skipped, and no
    gradient flows back through the batch statistics: the same arithmetic in fewer operators.
    """

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.loss = gluon.loss.SoftmaxCrossEntropyLoss()

    def hybrid_forward(self, F, x, y):
        out = x
        for layer in self.net[1:]:  # net[0] is Flatten
            out = layer(out)
        loss = self.loss(out, y)
        correct = F.sum(F.argmax(out, axis=1) == y)
        return loss, F.BlockGrad(F.concat(F.sum(loss), correct, dim=0))


def train(config: TrainConfig, images: np.ndarray, labels: np.ndarray,
          on_epoch: EpochCallback | None = None) -> TrainResult:
    """Fit the lab's MLP on (images, labels) with ``config``; ``on_epoch(epoch, metrics)`` after each."""
    n = len(labels)
    x_all = normalise(images)
    y_all = nd.array(labels, dtype="float32")
    net = build_net(config.hidden1, config.hidden2, seed=config.seed)
    step = _TrainStep(net)
    step.hybridize(static_alloc=True, static_shape=True)
    params = list(net.collect_params().values())
    weights, grads = [p.data() for p in params], [p.grad() for p in params]
    rng = np.random.default_rng(config.seed)
    history: dict[str, list[float]] = {"train_loss": [], "train_accuracy": []}
    for epoch in range(1, config.epochs + 1):
        order = nd.array(rng.permutation(n), dtype="int64")
        x_epoch, y_epoch = nd.take(x_all, order), nd.take(y_all, order)
        stats = []
        for start in range(0, n, config.batch_size):
            xb = x_epoch[start:start + config.batch_size]
            yb = y_epoch[start:start + config.batch_size]
            with autograd.record():
                loss, batch_stats = step(xb, yb)
            loss.backward()
            for w, g in zip(weights, grads):
                nd.sgd_update(w, g, lr=config.lr, wd=0.0, rescale_grad=1.0 / xb.shape[0], out=w)
            stats.append(batch_stats)
        loss_sum, correct = nd.add_n(*stats).asnumpy().tolist()
        metrics = {"train_loss": loss_sum / n, "train_accuracy": correct / n}
        if not math.isfinite(metrics["train_loss"]):
            raise Diverged(epoch, metrics["train_loss"])
        for key, value in metrics.items():
            history[key].append(value)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    return TrainResult(net, history)

