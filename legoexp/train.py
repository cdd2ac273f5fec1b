"""The one training function: every entry point (baseline, sweep trials, comparisons) calls ``train``.

It does what the lab's loop does, faster and reproducibly: images are normalised once
((x/255 - 0.13)/0.31) instead of per batch; each epoch's shuffle comes from a NumPy generator
seeded with the run's seed (the lab's DataLoader used the unseeded global one); the network,
softmax cross-entropy and the batch statistics run as one hybridized graph with static memory,
called straight through its compiled CachedOp, on input buffers that NumPy fills in place; SGD
updates each parameter in place through a NumPy view of its memory with ``sgd_update``'s
float32 arithmetic at the lab's ``step(batch_size)`` scaling (the same numbers as Gluon's
Trainer, bit for bit, in a third of the time MXNet's operator takes); the loss and accuracy are
read back once per epoch, not per batch. The same config and data give the same numbers in any
process. A non-finite loss stops training at that epoch with ``Diverged``.
"""

import ctypes
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from mxnet import autograd, gluon, nd
from mxnet.base import _LIB, check_call

from legoexp.config import TrainConfig
from legoexp.model import INPUT_SIZE, build_net, normalised


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


def _writable(array: nd.NDArray) -> np.ndarray:
    """A NumPy array on the memory of a float32 NDArray (NumPy 1.23 makes DLPack views read-only).
    Touch it only while MXNet's engine has nothing pending on ``array``."""
    assert array.dtype == np.float32
    array.wait_to_read()
    pointer = ctypes.c_void_p()
    check_call(_LIB.MXNDArrayGetData(array.handle, ctypes.byref(pointer)))
    return np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=array.shape)


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


class _Batches:
    """The step graph for one batch size, with its input buffers, which NumPy fills in place.

    Each batch size gets a graph of its own (static memory and shapes; the last batch of an epoch
    may be smaller). After Gluon's first call has compiled it, it is called straight through its
    CachedOp with the arguments Gluon would pass (inputs, then the parameters' arrays), which
    are the same at every step here, without Gluon's per-call flattening and checks.
    """

    def __init__(self, net, size: int):
        self.x, self.y = nd.zeros((size, INPUT_SIZE)), nd.zeros((size,))
        self.x_numpy, self.y_numpy = _writable(self.x), _writable(self.y)
        self.block = _TrainStep(net)
        self.block.hybridize(static_alloc=True, static_shape=True)
        self.op = None

    def __call__(self):
        if self.op is None:
            outputs = self.block(self.x, self.y)
            self.op = self.block._cached_op
            self.args = [(self.x, self.y)[i] if is_input else i.data() for is_input, i in self.block._cached_op_args]
            return outputs
        return self.op(*self.args)


@np.errstate(over="ignore", invalid="ignore")  # a diverging fit overflows here; the epoch's loss says so
def _sgd(weights, grads, scratch, rate: np.float32) -> None:
    """``sgd_update``'s arithmetic, in place: w - (lr * rescale_grad) * g in float32, bit for bit."""
    for w, g, tmp in zip(weights, grads, scratch):
        np.multiply(g, rate, out=tmp)
        np.subtract(w, tmp, out=w)


_kept: dict[tuple[int, int], tuple] = {}  # (hidden1, hidden2) -> net, its step graphs, initial weights by seed
_KEEP = 4  # architectures kept (a sweep's fold process alternates between two trials at most)


def param_values(net) -> list[np.ndarray]:
    """Copies of ``net``'s parameters, in ``collect_params`` order (what ``cv`` sends between processes)."""
    return [p.data().asnumpy() for p in net.collect_params().values()]


def _kept_net(config: TrainConfig):
    """A net of ``config``'s architecture set to the weights ``build_net`` gives ``config.seed``,
    and the step graphs made for it before: building the net and compiling its graphs is a tenth of
    a fold's time (docs/performance.md), and a trial's folds share both."""
    key = (config.hidden1, config.hidden2)
    if key not in _kept:
        if len(_kept) >= _KEEP:
            del _kept[next(iter(_kept))]
        net = build_net(*key, seed=config.seed)
        _kept[key] = (net, {}, {config.seed: param_values(net)})
    net, graphs, initial = _kept[key]
    if config.seed not in initial:
        initial[config.seed] = param_values(build_net(*key, seed=config.seed))
    for param, value in zip(net.collect_params().values(), initial[config.seed]):
        np.copyto(_writable(param.data()), value)
    return net, graphs


def train(config: TrainConfig, images: np.ndarray, labels: np.ndarray,
          on_epoch: EpochCallback | None = None, reuse: bool = False) -> TrainResult:
    """Fit the lab's MLP on (images, labels) with ``config``; ``on_epoch(epoch, metrics)`` after each.

    ``reuse``: the net (and its compiled graphs) may be one an earlier ``reuse`` fit of the same
    architecture returned, set back to its initial weights: the same numbers, but the returned net
    is only good until the next such fit (cross-validation scores it at once, then drops it)."""
    n = len(labels)
    x_all, y_all = normalised(images), labels.astype(np.float32)
    if reuse:
        net, graphs = _kept_net(config)
    else:
        net, graphs = build_net(config.hidden1, config.hidden2, seed=config.seed), {}
    params = list(net.collect_params().values())
    weights, grads = [_writable(p.data()) for p in params], [_writable(p.grad()) for p in params]
    scratch = [np.empty_like(g) for g in grads]
    lr = np.float32(config.lr)
    rng = np.random.default_rng(config.seed)
    history: dict[str, list[float]] = {"train_loss": [], "train_accuracy": []}
    for epoch in range(1, config.epochs + 1):
        order = rng.permutation(n)
        stats = []
        for start in range(0, n, config.batch_size):
            batch = order[start:start + config.batch_size]
            if len(batch) not in graphs:
                graphs[len(batch)] = _Batches(net, len(batch))
            graph = graphs[len(batch)]
            np.take(x_all, batch, axis=0, out=graph.x_numpy)
            np.take(y_all, batch, out=graph.y_numpy)
            with autograd.record():
                loss, batch_stats = graph()
            loss.backward()
            stats.append(batch_stats)
            nd.waitall()  # the gradients are in; nothing reads the weights or the inputs any more
            _sgd(weights, grads, scratch, lr * np.float32(1.0 / len(batch)))
        loss_sum, correct = nd.add_n(*stats).asnumpy().tolist()
        metrics = {"train_loss": loss_sum / n, "train_accuracy": correct / n}
        if not math.isfinite(metrics["train_loss"]):
            raise Diverged(epoch, metrics["train_loss"])
        for key, value in metrics.items():
            history[key].append(value)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    return TrainResult(net, history)
