"""The one training function: every entry point (baseline, sweep trials, comparisons) calls ``train``.

It does what the lab's loop does, faster and reproducibly: images are normalised once
((x/255 - 0.13)/0.31, read from a table of the 256 grey levels) instead of per batch; each epoch's
shuffle comes from a NumPy generator seeded with the run's seed (the lab's DataLoader used the
unseeded global one); the network, softmax cross-entropy and the batch statistics are one graph
whose forward and backward run as one bound MXNet executor per batch size and architecture, kept
across fits, with the same operators and kernels as Gluon's hybridized block: two C calls start a
step (0.02 ms; calling the block's CachedOp under ``autograd.record()`` and ``backward()``, which
rebuilds and differentiates autograd's tape at every step, took 0.16 ms of a 1 ms step); NumPy
fills the input buffers in place; SGD updates each parameter in place through a NumPy view of its
memory with ``sgd_update``'s float32 arithmetic at the lab's ``step(batch_size)`` scaling (the same
numbers as Gluon's Trainer, bit for bit, in a third of the time MXNet's operator takes); each
batch's loss sum and correct count are read back with the step and summed per epoch in
``add_n``'s order. The same config and data give the same numbers in any process, and the same
weights and history as the hybridized Gluon step this replaced (``tests/test_train.py`` keeps it
as the reference). A non-finite loss stops training at that epoch with ``Diverged``.

Where a step's time goes (lab files, batch 34, 2026-12-05; MXNet's profiler, oneDNN's verbose log,
timers around each part): of about 0.75 ms, 0.44 ms is the first layer's two matmuls (forward 0.24,
weight gradient 0.20; oneDNN takes as long with one OpenMP thread as with two), 0.15 ms the small
layers, loss and statistics (about 25 operators, run as two bulked segments; mostly MXNet's own
per-operator cost: oneDNN's kernels take 1-9 us each), 0.07 ms the SGD update (NumPy), 0.03 ms the
batch gathered, 0.02 ms the two calls that start the step; per fit, ``build_net`` takes about 5 ms.
"""

import ctypes
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import mxnet as mx
import numpy as np
from mxnet import gluon, nd
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

    The input is already flat (batch, 2304), so the net's Flatten (a copy here) is skipped; the loss
    is ``SoftmaxCrossEntropyLoss``'s -pick(log_softmax(out), y) without its mean over one value per
    sample (x/1, an identity); the statistics read the loss and the scores through ``BlockGrad``, so
    no zero gradient flows back from them: the same arithmetic in five operators fewer.
    """

    def __init__(self, net):
        super().__init__()
        self.net = net

    def hybrid_forward(self, F, x, y):
        out = x
        for layer in self.net[1:]:  # net[0] is Flatten
            out = layer(out)
        loss = -F.pick(F.log_softmax(out), y)
        seen_loss, seen_out = F.BlockGrad(loss), F.BlockGrad(out)
        return loss, F.concat(F.sum(seen_loss), F.sum(F.argmax(seen_out, axis=1) == y), dim=0)


class _Steps:
    """A net's training steps: its ``_TrainStep`` graph as a symbol, a bound executor per batch size
    (static memory and shapes; the last batch of an epoch may be smaller), made on first use, and
    NumPy views of the net's weights and gradients for the SGD update.

    Each executor reads the net's weights and writes its gradients in place (``grad_req`` write,
    the inputs' gradients not computed), and runs forward and backward, with the loss's head
    gradient of ones that ``backward()`` gives, through two C calls on handles made once. MXNet's
    default MKLDNN graph partitioning only rewrites inference graphs (these need gradients), so
    binding leaves the graph as it is; its one log line per bind is switched off
    (``MXNET_SUBGRAPH_VERBOSE``, unless set).
    """

    def __init__(self, net):
        self.net = net
        loss, stats = _TrainStep(net)(mx.sym.var("x"), mx.sym.var("y"))
        self.symbol = mx.sym.Group([loss, stats])
        params = list(net.collect_params().values())
        self.params = {p.name: p for p in params}
        self.weights, self.grads = [_writable(p.data()) for p in params], [_writable(p.grad()) for p in params]
        self.by_size: dict[int, _Step] = {}

    def __getitem__(self, size: int) -> "_Step":
        if size not in self.by_size:
            self.by_size[size] = _Step(self.symbol, self.params, size)
        return self.by_size[size]


class _Step:
    """One batch size's bound executor, its input buffers (which NumPy fills in place) and a NumPy
    view of its (loss sum, correct count) output."""

    def __init__(self, symbol, params: dict, size: int):
        self.x, self.y = nd.zeros((size, INPUT_SIZE)), nd.zeros((size,))
        inputs = {"x": self.x, "y": self.y}
        names = symbol.list_arguments()
        os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")  # read once, at a process's first bind
        self.executor = symbol.bind(mx.cpu(), args=[inputs[n] if n in inputs else params[n].data() for n in names],
                                    args_grad=[None if n in inputs else params[n].grad() for n in names],
                                    grad_req=["null" if n in inputs else "write" for n in names])
        self.heads = [nd.ones((size,)), nd.zeros((2,))]  # the loss's head gradient, and the statistics'
        self.head_handles = (ctypes.c_void_p * 2)(*(h.handle.value for h in self.heads))
        self.x_numpy, self.y_numpy = _writable(self.x), _writable(self.y)
        self.stats = _writable(self.executor.outputs[1])

    def __call__(self) -> None:
        """Push forward and backward to MXNet's engine (their results are ready after ``nd.waitall()``)."""
        check_call(_LIB.MXExecutorForward(self.executor.handle, 1))
        check_call(_LIB.MXExecutorBackwardEx(self.executor.handle, 2, self.head_handles, 1))


def _sgd(weights, grads, rate: np.float32) -> None:
    """``sgd_update``'s arithmetic, in place: w - (lr * rescale_grad) * g in float32, bit for bit
    (the gradients are scaled in place: the next backward overwrites them)."""
    for w, g in zip(weights, grads):
        np.multiply(g, rate, out=g)
        np.subtract(w, g, out=w)


def _add_n(rows: list[np.ndarray]) -> np.ndarray:
    """``nd.add_n(*rows)`` for float32 rows of two, in its order of additions, so bit for bit: two to
    four rows are added from the right (a + (b + (c + d))), five or more from the left (as measured;
    ``tests/test_train.py`` checks 1 to 39 rows against ``nd.add_n``)."""
    if 3 <= len(rows) <= 4:
        total = rows[-1]
        for row in reversed(rows[:-1]):
            total = row + total
        return total
    total = rows[0].copy()
    for row in rows[1:]:
        total += row
    return total


_LEVELS = normalised(np.arange(256, dtype=np.uint8)[:, None]).ravel()  # each grey level, normalised


def _inputs(images: np.ndarray) -> np.ndarray:
    """``normalised(images)``, element for element; uint8 images are looked up in ``_LEVELS`` (2x faster)."""
    if images.dtype == np.uint8:
        return _LEVELS[images.reshape(len(images), -1)]
    return normalised(images)


_kept: dict[tuple[int, int], tuple] = {}  # (hidden1, hidden2) -> a net's steps, initial weights by seed
_working: dict[tuple[int, int], _Steps] = {}  # (hidden1, hidden2) -> the steps of a net that fresh fits train
_KEEP = 4  # architectures kept (a sweep's fold process alternates between two trials at most)


def param_values(net) -> list[np.ndarray]:
    """Copies of ``net``'s parameters, in ``collect_params`` order (what ``cv`` sends between processes)."""
    return [p.data().asnumpy() for p in net.collect_params().values()]


def _kept_steps(config: TrainConfig) -> _Steps:
    """The steps of a net of ``config``'s architecture, its weights set to those ``build_net`` gives
    ``config.seed``: building a net and binding its steps is part of every fold's time
    (docs/performance.md), and a trial's folds share both."""
    key = (config.hidden1, config.hidden2)
    if key not in _kept:
        if len(_kept) >= _KEEP:
            del _kept[next(iter(_kept))]
        net = build_net(*key, seed=config.seed)
        _kept[key] = (_Steps(net), {config.seed: param_values(net)})
    steps, initial = _kept[key]
    if config.seed not in initial:
        initial[config.seed] = param_values(build_net(*key, seed=config.seed))
    for weights, value in zip(steps.weights, initial[config.seed]):
        np.copyto(weights, value)
    return steps


def _fresh(config: TrainConfig) -> tuple:
    """A new net from ``build_net`` (``config``'s architecture and seed), and the steps of a working net
    of that architecture (kept, bound once) set to its weights. A fresh fit trains the working net
    and copies the result back into the new one: the same numbers as training the new net itself,
    without binding executors again (a few ms a fit). The working net is built first with the same
    seed, so MXNet's generator ends where ``build_net`` alone leaves it."""
    key = (config.hidden1, config.hidden2)
    if key not in _working:
        if len(_working) >= _KEEP:
            del _working[next(iter(_working))]
        _working[key] = _Steps(build_net(*key, seed=config.seed))
    net, steps = build_net(*key, seed=config.seed), _working[key]
    for weights, param in zip(steps.weights, net.collect_params().values()):
        np.copyto(weights, _writable(param.data()))
    return net, steps


def train(config: TrainConfig, images: np.ndarray, labels: np.ndarray,
          on_epoch: EpochCallback | None = None, reuse: bool = False) -> TrainResult:
    """Fit the lab's MLP on (images, labels) with ``config``; ``on_epoch(epoch, metrics)`` after each.

    ``reuse``: the net (and its bound steps) may be one an earlier ``reuse`` fit of the same
    architecture returned, set back to its initial weights: the same numbers, but the returned net
    is only good until the next such fit (cross-validation scores it at once, then drops it).
    Fits of one architecture share a working net and its executors: one fit at a time per process
    (legoexp runs fits side by side in processes, never in threads)."""
    n = len(labels)
    x_all, y_all = _inputs(images), labels.astype(np.float32)
    if reuse:
        steps = _kept_steps(config)
        net = steps.net
    else:
        net, steps = _fresh(config)
    lr = np.float32(config.lr)
    rng = np.random.default_rng(config.seed)
    history: dict[str, list[float]] = {"train_loss": [], "train_accuracy": []}
    for epoch in range(1, config.epochs + 1):
        order = rng.permutation(n)
        stats = []
        for start in range(0, n, config.batch_size):
            batch = order[start:start + config.batch_size]
            step = steps[len(batch)]
            np.take(x_all, batch, axis=0, out=step.x_numpy, mode="clip")  # no bounds to check: a permutation
            np.take(y_all, batch, out=step.y_numpy, mode="clip")
            step()
            nd.waitall()  # the gradients are in; nothing reads the weights or the inputs any more
            stats.append(step.stats.copy())
            with np.errstate(over="ignore", invalid="ignore"):  # a diverging fit overflows here; the loss says so
                _sgd(steps.weights, steps.grads, lr * np.float32(1.0 / len(batch)))
        loss_sum, correct = _add_n(stats).tolist()
        metrics = {"train_loss": loss_sum / n, "train_accuracy": correct / n}
        if not math.isfinite(metrics["train_loss"]):
            raise Diverged(epoch, metrics["train_loss"])
        for key, value in metrics.items():
            history[key].append(value)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    if net is not steps.net:
        for param, weights in zip(net.collect_params().values(), steps.weights):
            np.copyto(_writable(param.data()), weights)
    return TrainResult(net, history)
