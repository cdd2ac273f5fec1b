"""``python -m legoexp.bench``: how fast the one training function is, against the lab's own loop.

Both fits run in this process on the same data (the lab's files when given, else the generated
set), 10 epochs at batch 34, repeated; the table reports min and median samples per second and
their ratio. The lab loop is re-created as the notebook wrote it: a Gluon DataLoader applying
ToTensor + Normalize per batch, a network that is not hybridized, and a metric update per batch.
"""

import argparse
import json
import statistics
import time

import numpy as np

from legoexp.errors import run_main


def lab_loop(images: np.ndarray, labels: np.ndarray, epochs: int = 10, batch_size: int = 34, seed: int = 42):
    """The notebook's training loop, as written there (its shuffle is NumPy's global generator)."""
    import mxnet as mx
    from mxnet import autograd, gluon
    from mxnet.gluon.data.vision import transforms

    from legoexp.model import build_net

    mx.random.seed(seed)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(0.13, 0.31)])
    dataset = gluon.data.ArrayDataset(mx.nd.array(images[..., None], dtype="uint8"), labels.astype("float32"))
    loader = gluon.data.DataLoader(dataset.transform_first(transform), batch_size=batch_size, shuffle=True)
    net = build_net()
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.04})
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


def _rate(fn, samples: int, repeat: int) -> dict:
    fn()  # warm-up: graph building, allocation
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"best": samples / min(times), "median": samples / statistics.median(times)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m legoexp.bench", description=__doc__.splitlines()[0])
    p.add_argument("--data", default="synthetic", help="as for the baseline (default: synthetic)")
    p.add_argument("--repeat", type=int, default=5, help="timed repetitions of each fit (default 5)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)

    from legoexp.data import load_split, open_source
    from legoexp.train import TrainConfig, train

    split = load_split(open_source(args.data), "train")
    samples = 10 * len(split)
    rows = {
        "fit_samples_per_s": _rate(lambda: train(TrainConfig(), split.images, split.labels), samples, args.repeat),
        "lab_loop_samples_per_s": _rate(lambda: lab_loop(split.images, split.labels), samples, args.repeat),
    }
    rows["speedup_vs_lab"] = {k: rows["fit_samples_per_s"][k] / rows["lab_loop_samples_per_s"][k]
                              for k in ("best", "median")}
    print(f"data: {split.where}, {len(split)} images, 10 epochs at batch 34, {args.repeat} repetitions")
    print(f"{'':26}{'best':>10}{'median':>10}")
    for name, row in rows.items():
        print(f"{name:26}{row['best']:>10.1f}{row['median']:>10.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    run_main(main)
