"""``python -m legoexp.bench``: legoexp's speed against the lab's loop, a NumPy peer and the hardware.

In one run, on the lab's files when given (else the generated set), it measures: the one training
function (10 epochs, batch 34) and the lab's own loop re-created as the notebook wrote it (Gluon
DataLoader with ToTensor + Normalize per batch, not hybridized, a metric update per batch); the
same net and SGD written directly in NumPy; the rate of this net's matmuls and how far the fit
is from the time that rate implies for its 1.23 MFLOP per sample; three whole baseline runs (the
first creates the tracking store) and a whole 30-trial sweep, each from process start, with the
share of the sweep spent in MLflow/Optuna bookkeeping (drawing figures is timed apart); with
``--serve``, latency and throughput of ``mlflow models serve``. Timings are repeated (min and
median); compare ratios measured in one run, not figures across machines.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from legoexp.errors import run_main

FLOP_PER_SAMPLE = 1.23e6  # forward 2*(2304*128 + 128*64 + 64*10), weight grads, 2 small input grads
ROOT = Path(__file__).resolve().parent.parent


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


def matmul_gflops(batch: int = 34, repeat: int = 200) -> dict:
    """GFLOP/s of this net's forward matmuls at ``batch``: NumPy's BLAS on one thread and MXNet's
    FullyConnected (what legoexp runs), best of 5 rounds each."""
    import mxnet as mx

    rng = np.random.default_rng(0)
    shapes = [(2304, 128), (128, 64), (64, 10)]
    flop = sum(2 * batch * k * n for k, n in shapes)
    arrays = [(rng.standard_normal((batch, k), np.float32), rng.standard_normal((k, n), np.float32)) for k, n in shapes]
    mx_arrays = [(mx.nd.array(a), mx.nd.array(w.T.copy()), mx.nd.zeros(w.shape[1])) for a, w in arrays]

    def numpy_round():
        for a, w in arrays:
            a @ w

    def mxnet_round():
        out = [mx.nd.FullyConnected(a, w, b, num_hidden=w.shape[0]) for a, w, b in mx_arrays]
        mx.nd.waitall()
        return out

    def rate(fn):
        best = min(_times(lambda: [fn() for _ in range(repeat)], 5))
        return flop * repeat / best / 1e9

    with threadpool_limits(1):
        numpy_rate = rate(numpy_round)
    return {"numpy": numpy_rate, "mxnet": rate(mxnet_round)}


def _times(fn, repeat: int) -> list[float]:
    fn()  # warm-up: graph building, allocation
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _rate(times: list[float], samples: int) -> dict:
    return {"best": samples / min(times), "median": samples / statistics.median(times)}


def _command_wall(args: list[str], env: dict, cwd) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t, proc


def whole_runs(data: str, trials: int, store: str, sweep_options: list[str], baselines: int = 3
               ) -> tuple[dict, dict, dict, str]:
    """``baselines`` baseline runs (`mlflow run --env-manager local`), then a sweep, each from process
    start, on a store created in ``store`` by the first baseline; returns the repeated rows, the
    single rows, the environment used, and the challenger's model URI."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_RUN_ID", None)
    baseline = [_command_wall([sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "baseline",
                               "--env-manager", "local", "-P", f"data={data}"], env, store)[0]
                for _ in range(baselines)]
    sweep_s, proc = _command_wall([sys.executable, "-m", "legoexp.bench", "--sweep-probe", "--data", data,
                                   "--trials", str(trials), *sweep_options], env, store)
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    uri = subprocess.run([sys.executable, "-c", "import mlflow; c = mlflow.MlflowClient(); "
                          "print(c.get_model_version_by_alias('lego-classifier', 'challenger').source)"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    repeated = {"baseline_wall_s": {"best": min(baseline), "median": statistics.median(baseline)}}
    singles = {"baseline_new_store_wall_s": baseline[0], "sweep_wall_s": sweep_s,
               "tracking_share": probe["bookkeeping_s"] / sweep_s, "sweep_figures_s": probe["figures_s"]}
    return repeated, singles, env, uri


def sweep_probe(argv: list[str]) -> None:
    """Run the sweep in this process, timing every MLflow and Optuna bookkeeping call (outermost only)."""
    import functools

    import mlflow
    import optuna
    from matplotlib.figure import Figure

    spent = [0.0]
    rendering = [0.0]  # drawing figures inside mlflow.log_figure: the study's output, not bookkeeping
    depth = [0]

    def timed(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            depth[0] += 1
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    spent[0] += time.perf_counter() - t
        return wrapper

    savefig = Figure.savefig

    def timed_savefig(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return savefig(self, *args, **kwargs)
        finally:
            rendering[0] += time.perf_counter() - t

    Figure.savefig = timed_savefig

    def patch(owner, names=None):
        for name in names or [n for n in vars(owner) if not n.startswith("_")]:
            if callable(getattr(owner, name, None)) and not isinstance(getattr(owner, name), type):
                setattr(owner, name, timed(getattr(owner, name)))

    patch(mlflow.MlflowClient)
    patch(mlflow, ["log_figure", "register_model", "start_run", "set_experiment", "log_input"])
    patch(mlflow.pyfunc, ["log_model"])
    patch(optuna.storages.JournalStorage)
    patch(optuna.storages.RDBStorage)
    patch(optuna.samplers.TPESampler, ["sample_relative", "sample_independent", "infer_relative_search_space"])
    patch(optuna.Study, ["enqueue_trial", "set_user_attr"])
    from legoexp import sweep

    try:
        sweep.main(argv)
    finally:
        print(json.dumps({"bookkeeping_s": spent[0] - rendering[0], "figures_s": rendering[0]}))


def serve(model_uri: str, env: dict, cwd: str, images: np.ndarray) -> dict:
    """p50/p95 latency of one image and images/s of 150-image requests against `mlflow models serve`."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager",
                               "local", "-h", "127.0.0.1", "-p", str(port), "--workers", "1"],
                              env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def post(batch):
        body = json.dumps({"inputs": batch.tolist()}).encode()
        req = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.read()

    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        one = _times(lambda: post(images[:1]), 200)
        batch = _times(lambda: post(images[:150]), 10)
    finally:
        server.terminate()
        server.wait(timeout=30)
    ms = sorted(t * 1000 for t in one)
    return {"serve_p50_ms": ms[len(ms) // 2], "serve_p95_ms": ms[int(len(ms) * 0.95)],
            "serve_batch150_per_s": 150 / statistics.median(batch)}


def _machine(load_before: float) -> dict:
    from importlib.metadata import version

    return {"cores": len(os.sched_getaffinity(0)), "load_before": load_before, "load_after": os.getloadavg()[0],
            "versions": {pkg: version(pkg) for pkg in ("mxnet", "numpy", "mlflow", "optuna")}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m legoexp.bench", description=__doc__.split("\n\n")[0],
                                epilog="Options after -- go to the timed sweep, e.g. `-- --folds 2 --epochs 2` "
                                       "for a quick try.")
    p.add_argument("--data", default="synthetic", help="as for the baseline (default: synthetic); "
                                                        "the lab's files when you have them")
    p.add_argument("--repeat", type=int, default=5, help="timed repetitions of each fit (default 5)")
    p.add_argument("--trials", type=int, default=30, help="trials of the timed sweep (default 30)")
    p.add_argument("--fits-only", action="store_true", help="skip the whole baseline and sweep runs")
    p.add_argument("--serve", action="store_true", help="also time `mlflow models serve` of the sweep's model")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--sweep-probe", action="store_true", help=argparse.SUPPRESS)
    args, rest = p.parse_known_args(argv)
    if args.sweep_probe:
        sweep_probe(["--data", args.data, "--trials", str(args.trials), *rest])
        return 0
    if rest and rest[0] == "--":
        rest = rest[1:]
    elif rest:
        p.error(f"unrecognized arguments: {' '.join(rest)} (options for the sweep go after --)")

    from legoexp.data import load_split, open_source
    from legoexp.train import TrainConfig, train

    load_before = os.getloadavg()[0]
    split = load_split(open_source(args.data), "train")
    samples = 10 * len(split)
    fit = _times(lambda: train(TrainConfig(), split.images, split.labels), args.repeat)
    lab = _times(lambda: lab_loop(split.images, split.labels), args.repeat)
    with threadpool_limits(1):  # at batch 34 a second BLAS thread only adds contention
        peer = _times(lambda: numpy_peer(split.images, split.labels), args.repeat)
    rates = matmul_gflops()
    gflops = max(rates.values())
    rows = {"fit_samples_per_s": _rate(fit, samples), "lab_loop_samples_per_s": _rate(lab, samples),
            "numpy_peer_samples_per_s": _rate(peer, samples)}
    rows["speedup_vs_lab"] = {k: rows["fit_samples_per_s"][k] / rows["lab_loop_samples_per_s"][k] for k in ("best", "median")}
    rows["vs_numpy_peer"] = {k: rows["fit_samples_per_s"][k] / rows["numpy_peer_samples_per_s"][k] for k in ("best", "median")}
    bound_s = samples * FLOP_PER_SAMPLE / (gflops * 1e9)
    rows["matmul_gflops"] = {"best": gflops, "median": gflops}
    rows["bound_ratio"] = {"best": min(fit) / bound_s, "median": statistics.median(fit) / bound_s}
    singles = {}
    if not args.fits_only:
        with tempfile.TemporaryDirectory() as store:
            repeated, singles, env, model_uri = whole_runs(args.data, args.trials, store, rest)
            rows |= repeated
            if args.serve:
                singles |= serve(model_uri, env, store, load_split(open_source(args.data), "test").images)

    machine = _machine(load_before)
    print(f"machine: {machine['cores']} cores, load average {machine['load_before']:.1f} at the start and "
          f"{machine['load_after']:.1f} at the end (this run's own work included); "
          + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()))
    print(f"data: {split.where}, {len(split)} images, 10 epochs at batch 34, {args.repeat} repetitions; "
          f"matmul rate used for the bound: {gflops:.1f} GFLOP/s, the faster of NumPy (1 thread) "
          f"{rates['numpy']:.1f} and MXNet FullyConnected {rates['mxnet']:.1f}, this net's shapes at batch 34")
    print(f"{'':26}{'best':>10}{'median':>10}")
    for name, row in rows.items():
        print(f"{name:26}{row['best']:>10.2f}{row['median']:>10.2f}")
    for name, value in singles.items():
        print(f"{name:26}{value:>10.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**rows, **singles, "machine": machine}, f, indent=2)
    return 0


if __name__ == "__main__":
    run_main(main)
