"""The one training function: deterministic across processes, learning, and stopping on divergence."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from legoexp.data import load_split, open_source
from legoexp.evaluate import evaluate
from legoexp.model import normalise
from legoexp.train import Diverged, TrainConfig, train

SMALL = TrainConfig(epochs=3, seed=7)


@pytest.fixture(scope="module")
def synthetic_train():
    return load_split(open_source("synthetic"), "train")


def _history_in_fresh_process(config: TrainConfig) -> dict:
    code = (
        "import json; from legoexp.data import load_split, open_source; "
        "from legoexp.train import TrainConfig, train; "
        "s = load_split(open_source('synthetic'), 'train'); "
        f"print(json.dumps(train(TrainConfig(**{config.as_params()!r}), s.images, s.labels).history))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_same_seed_gives_identical_epochs_in_two_fresh_processes():
    first, second = _history_in_fresh_process(SMALL), _history_in_fresh_process(SMALL)
    assert first == second
    assert len(first["train_loss"]) == SMALL.epochs


def test_a_different_seed_gives_different_numbers(synthetic_train):
    a = train(SMALL, synthetic_train.images, synthetic_train.labels).history
    b = train(TrainConfig(epochs=3, seed=8), synthetic_train.images, synthetic_train.labels).history
    assert a["train_loss"] != b["train_loss"]


def test_training_learns_and_reports_every_epoch(synthetic_train):
    seen = []
    result = train(TrainConfig(epochs=4), synthetic_train.images, synthetic_train.labels,
                   on_epoch=lambda epoch, m: seen.append((epoch, m["train_loss"])))
    assert [e for e, _ in seen] == [1, 2, 3, 4]
    assert result.history["train_loss"][-1] < result.history["train_loss"][0]
    accuracy = evaluate(result.net, synthetic_train.images, synthetic_train.labels).accuracy
    assert accuracy > 0.5  # ten classes: chance is 0.1


def test_hidden_sizes_shape_the_network(synthetic_train):
    result = train(TrainConfig(epochs=1, hidden1=16, hidden2=8), synthetic_train.images[:40],
                   synthetic_train.labels[:40])
    shapes = [p.shape for p in result.net.collect_params().values()]
    assert shapes == [(16, 2304), (16,), (8, 16), (8,), (10, 8), (10,)]


def test_a_diverging_loss_stops_training_at_that_epoch(synthetic_train):
    epochs_done = []
    with pytest.raises(Diverged) as e:
        train(TrainConfig(epochs=10, lr=1e4), synthetic_train.images, synthetic_train.labels,
              on_epoch=lambda epoch, m: epochs_done.append(epoch))
    assert e.value.epoch == len(epochs_done) + 1
    assert "loss became" in str(e.value)


def test_normalise_matches_the_labs_totensor_and_normalize():
    from mxnet import nd
    from mxnet.gluon.data.vision import transforms

    images = np.random.default_rng(0).integers(0, 256, (3, 48, 48, 1), dtype=np.uint8)
    lab = transforms.Compose([transforms.ToTensor(), transforms.Normalize(0.13, 0.31)])
    expected = np.stack([lab(nd.array(im, dtype="uint8")).asnumpy().ravel() for im in images])
    np.testing.assert_allclose(normalise(images).asnumpy(), expected, rtol=1e-6, atol=1e-6)


def test_train_gives_the_numbers_of_a_plain_gluon_loop_bit_for_bit(synthetic_train):
    """The speed-ups (flat pre-normalised input, one graph, per-parameter sgd_update, no per-batch
    sync) change no number: a plain Gluon loop with the same shuffle ends with identical weights."""
    import mxnet as mx
    from mxnet import autograd, gluon, nd

    from legoexp.model import build_net

    images, labels = synthetic_train.images[:120], synthetic_train.labels[:120]  # 3 batches of 34 + one of 18
    config = TrainConfig(epochs=2, seed=5)
    ours = train(config, images, labels)

    net = build_net(seed=config.seed)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": config.lr})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    x, y = normalise(images).reshape((-1, 1, 48, 48)), nd.array(labels)  # images, as the lab's net sees them
    rng = np.random.default_rng(config.seed)
    for _ in range(config.epochs):
        order = rng.permutation(len(labels))
        for start in range(0, len(labels), config.batch_size):
            idx = nd.array(order[start:start + config.batch_size], dtype="int64")
            xb, yb = nd.take(x, idx), nd.take(y, idx)
            with autograd.record():
                loss = loss_fn(net(xb), yb)
            loss.backward()
            trainer.step(xb.shape[0])
    mx.nd.waitall()
    for mine, theirs in zip(ours.net.collect_params().values(), net.collect_params().values()):
        assert np.array_equal(mine.data().asnumpy(), theirs.data().asnumpy()), mine.name


def test_a_reused_net_gives_the_numbers_of_a_fresh_one_whatever_came_before(synthetic_train):
    """Cross-validation reuses a net and its graphs across fits of one architecture: set back to
    the seed's initial weights, it must train as a fresh net would, after any other fit."""
    x, y = synthetic_train.images[:300], synthetic_train.labels[:300]
    configs = [SMALL, TrainConfig(epochs=3, seed=8, hidden1=20), SMALL, TrainConfig(epochs=3, seed=9),
               TrainConfig(epochs=3, seed=7, batch_size=16), SMALL]
    for config in configs:
        fresh, reused = train(config, x, y), train(config, x, y, reuse=True)
        assert reused.history == fresh.history
        for a, b in zip(fresh.net.collect_params().values(), reused.net.collect_params().values()):
            assert np.array_equal(a.data().asnumpy(), b.data().asnumpy())
    first, again = train(SMALL, x, y, reuse=True).net, train(SMALL, x, y, reuse=True).net
    assert first is again  # the same net: kept, not rebuilt


@pytest.mark.parametrize("hidden1, hidden2", [(128, 64), (32, 16), (512, 256), (1, 1)])
def test_a_nets_size_counts_its_real_parameters_and_forward_multiply_adds(hidden1, hidden2):
    from legoexp.model import build_net, size

    net = build_net(hidden1, hidden2, seed=0)
    weights = [p.data() for p in net.collect_params().values()]
    assert size(hidden1, hidden2)["param_count"] == sum(w.size for w in weights)
    assert size(hidden1, hidden2)["macs_per_image"] == sum(w.size for w in weights if w.ndim == 2)
    assert size(128, 64)["param_count"] == 303_946  # the lab's net


def _reference_train(config: TrainConfig, images, labels):
    """``train`` as it was before the bound-executor step (2026-12-05): a hybridized Gluon block
    (net, softmax cross-entropy, batch statistics) recorded by autograd, ``backward``, SGD in NumPy at
    ``sgd_update``'s float32 arithmetic, and the epoch's statistics summed by ``add_n``. Returns the
    weights and the history."""
    from mxnet import autograd, gluon, nd

    from legoexp.model import build_net, normalised

    class Step(gluon.HybridBlock):
        def __init__(self, net):
            super().__init__()
            self.net, self.loss = net, gluon.loss.SoftmaxCrossEntropyLoss()

        def hybrid_forward(self, F, x, y):
            out = x
            for layer in self.net[1:]:
                out = layer(out)
            loss = self.loss(out, y)
            return loss, F.BlockGrad(F.concat(F.sum(loss), F.sum(F.argmax(out, axis=1) == y), dim=0))

    net = build_net(config.hidden1, config.hidden2, seed=config.seed)
    step = Step(net)
    step.hybridize(static_alloc=True, static_shape=True)
    params = list(net.collect_params().values())
    x_all, y_all = normalised(images), labels.astype(np.float32)
    rng = np.random.default_rng(config.seed)
    history = {"train_loss": [], "train_accuracy": []}
    for _ in range(config.epochs):
        order, stats = rng.permutation(len(labels)), []
        for start in range(0, len(labels), config.batch_size):
            batch = order[start:start + config.batch_size]
            with autograd.record():
                loss, batch_stats = step(nd.array(x_all[batch]), nd.array(y_all[batch]))
            loss.backward()
            stats.append(batch_stats)
            rate = np.float32(config.lr) * np.float32(1.0 / len(batch))
            for p in params:
                p.set_data(p.data().asnumpy() - p.grad().asnumpy() * rate)
        loss_sum, correct = nd.add_n(*stats).asnumpy().tolist()
        history["train_loss"].append(loss_sum / len(labels))
        history["train_accuracy"].append(correct / len(labels))
    return [p.data().asnumpy() for p in params], history


@pytest.mark.parametrize("config, n", [
    (TrainConfig(epochs=2, seed=5), 120),  # the lab's net and batch: 3 batches of 34 and one of 18
    (TrainConfig(epochs=3, seed=11, hidden1=20, hidden2=8, batch_size=16, lr=0.1), 300),  # 18 of 16, one of 12
    (TrainConfig(epochs=2, seed=3, hidden1=64, hidden2=32, batch_size=50, lr=0.2), 451),  # 9 of 50, one of 1
])
def test_train_gives_the_weights_and_history_of_the_reference_step_bit_for_bit(synthetic_train, config, n):
    """Whatever runs a step (graph, executor, operators), ``train`` ends with the same weights and
    the same per-epoch loss and accuracy as the reference, bit for bit, with and without ``reuse``."""
    images, labels = synthetic_train.images[:n], synthetic_train.labels[:n]
    weights, history = _reference_train(config, images, labels)
    for reuse in (False, True):
        result = train(config, images, labels, reuse=reuse)
        assert result.history == history
        for mine, theirs in zip(result.net.collect_params().values(), weights):
            assert np.array_equal(mine.data().asnumpy(), theirs), mine.name


def test_an_epochs_statistics_are_summed_in_add_ns_order():
    """``train`` reads each batch's (loss sum, correct count) back with the step and adds them up per
    epoch in NumPy: for any number of batches, the float32 sum ``nd.add_n`` gave, bit for bit."""
    from mxnet import nd

    from legoexp.train import _add_n

    rng = np.random.default_rng(0)
    for n in range(1, 40):
        for _ in range(50):
            rows = [(rng.standard_normal(2) * 10.0 ** rng.uniform(-3, 3, 2)).astype(np.float32) for _ in range(n)]
            expected = nd.add_n(*[nd.array(r) for r in rows]).asnumpy()
            assert np.array_equal(_add_n(rows), expected), n


WEIGHTS_AND_THREADS = """
import hashlib, os, sys, threadpoolctl
from legoexp.ops.proc import load_mxnet_on_every_core
if sys.argv[1] == "every-core":
    load_mxnet_on_every_core()
from legoexp.data import load_split, open_source
from legoexp.train import TrainConfig, param_values, train
s = load_split(open_source("synthetic"), "train")
digest = hashlib.sha256()
for config in (TrainConfig(epochs=2, seed=3), TrainConfig(epochs=2, hidden1=300, hidden2=200, batch_size=16)):
    fit = train(config, s.images, s.labels)
    for array in param_values(fit.net):
        digest.update(array.tobytes())
gomp = [i["num_threads"] for i in threadpoolctl.threadpool_info()
        if i["internal_api"] == "openmp" and "scikit_learn" not in i["filepath"]]
print(digest.hexdigest(), gomp, "OMP_NUM_THREADS" in os.environ)
"""


def test_mxnet_on_every_core_trains_the_same_weights_and_passes_no_setting_on():
    """The baseline and the bench load MXNet on every core (MXNet alone takes half of them on x86):
    the same weights bit for bit as one thread (a fold worker's), and the setting is not left in the
    environment that the processes it starts would inherit."""
    def run(mode, **env):
        out = subprocess.run([sys.executable, "-c", WEIGHTS_AND_THREADS, mode], capture_output=True, text=True,
                             check=True, env={**os.environ, **env})
        return out.stdout.strip().splitlines()[-1]

    cores = len(os.sched_getaffinity(0))
    every, one = run("every-core"), run("default", OMP_NUM_THREADS="1")
    assert every.split()[0] == one.split()[0]  # the weights
    assert every.endswith(f"[{cores}] False")  # MXNet's OpenMP on every core, nothing left in os.environ
    kept = run("every-core", OMP_NUM_THREADS="1")  # a user's setting is the user's: left as it was
    assert kept.split()[0] == every.split()[0] and kept.endswith("True")
