"""``python -m legoexp.bench``: legoexp's speed against the lab's loop, a NumPy peer, the hardware and the
straightforward sweep.

In one run, on the lab's files when given (else the generated set), it measures: the one training
function (10 epochs, batch 34), the lab's own loop and the same net in NumPy at one and at two BLAS
threads (``legoexp.bench.peers``); the rate of this net's matmuls and how far the fit is from the time
that rate implies for its 1.23 MFLOP per sample; three whole baseline runs (the first creates the
tracking store) and a whole 30-trial sweep, each from process start, with the sweep's wall time
split into its parts (``legoexp.ops.timings``, as logged on its parent run) and the share spent on
anything but training and scoring models (``overhead_share``); then the same sweep again,
instrumented, for the share of its wall time spent in MLflow, Optuna and figures
(``tracking_share``: their imports, calls, plots, importances, model export); with
``--peer-sweep``, the straightforward sweep from process start and ``sweep_vs_peer``; with
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

from legoexp.ops.command import run_main

FLOP_PER_SAMPLE = 1.23e6  # forward 2*(2304*128 + 128*64 + 64*10), weight grads, 2 small input grads
ROOT = Path(__file__).resolve().parents[2]


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
               ) -> tuple[dict, dict, dict, dict, str]:
    """``baselines`` baseline runs (`mlflow run --env-manager local`), then a sweep, each from process
    start, on a store created in ``store`` by the first baseline; returns the repeated rows, the
    single rows, the sweep's breakdown, the environment used, and the challenger's model URI."""
    env = _store_env(store)
    baseline = [_command_wall([sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "baseline",
                               "--env-manager", "local", "-P", f"data={data}"], env, store)[0]
                for _ in range(baselines)]
    # the user's command as it runs: its wall time, and its parts as it logs them on its parent run
    sweep_s = _command_wall([sys.executable, "-m", "legoexp.sweep", "--data", data, "--trials", str(trials),
                             *sweep_options], env, store)[0]
    parts = _logged_parts(env["MLFLOW_TRACKING_URI"])
    parts["exit"] = max(0.0, sweep_s - sum(parts.values()))
    # the same sweep again on a store of its own, instrumented (which slows it): the share of its wall
    # time in MLflow, Optuna and figures; -X importtime: what loading them costs, where the sweep does
    with tempfile.TemporaryDirectory() as probe_store:
        probe_s, proc = _command_wall([sys.executable, "-X", "importtime", "-m", "legoexp.bench", "--sweep-probe",
                                       "--data", data, "--trials", str(trials), *sweep_options],
                                      _store_env(probe_store), probe_store)
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    imports_s = _import_seconds(proc.stderr, TRACKING_PACKAGES)
    from legoexp import config

    uri = subprocess.run([sys.executable, "-c", "import mlflow; c = mlflow.MlflowClient(); "
                          f"print(c.get_model_version_by_alias({config.model_name()!r}, 'challenger').source)"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    training = sum(v for k, v in parts.items() if k.endswith("_training"))
    repeated = {"baseline_wall_s": {"best": min(baseline), "median": statistics.median(baseline)}}
    singles = {"baseline_new_store_wall_s": baseline[0], "sweep_wall_s": sweep_s,
               "tracking_share": (probe["tracking_s"] + imports_s) / probe_s, "sweep_probe_wall_s": probe_s,
               "overhead_share": 1 - training / sweep_s, "sweep_figures_s": parts.get("figures", 0.0),
               "sweep_tracking_imports_s": imports_s}
    return repeated, singles, parts, env, uri


def _logged_parts(tracking_uri: str) -> dict[str, float]:
    """The parts of the sweep's wall time its parent run logged (``time_<part>_s``), in lap order."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()],
                               "tags.`legoexp.kind` = 'sweep'")
    logged = {k[len("time_"):-len("_s")]: v for k, v in run.data.metrics.items()
              if k.startswith("time_") and k.endswith("_s") and k != "time_total_s"}
    order = list(PART_NAMES)
    return dict(sorted(logged.items(), key=lambda part: order.index(part[0]) if part[0] in order else len(order)))


def _store_env(store: str) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_RUN_ID", None)
    return env


TRACKING_PACKAGES = ("mlflow", "optuna", "matplotlib")


def _import_seconds(importtime_log: str, packages) -> float:
    """Seconds the first import of each of ``packages`` took (with all it imported), from -X importtime."""
    total = 0.0
    for line in importtime_log.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line[len("import time:"):].split("|")
            if name.strip() in packages:  # each package's own line: a first import is logged once
                total += int(cumulative) / 1e6
    return total


def peer_sweep(data: str, trials: int, sweep_options: list[str]) -> float:
    """Wall time of `python -m legoexp.bench.peers` from process start, with the sweep's folds, epochs and
    seed, into a new tracking store of its own."""
    from legoexp import config

    options = argparse.ArgumentParser()
    config.add_options(options, "sweep")
    ns, _ = options.parse_known_args(["--data", data, "--trials", str(trials), *sweep_options])
    cfg = config.resolve("sweep", config.settings("sweep"), ns.config, config.options(ns, "sweep"))
    with tempfile.TemporaryDirectory() as store:
        return _command_wall([sys.executable, "-m", "legoexp.bench.peers", "--data", data, "--trials", str(trials),
                              "--folds", str(cfg["folds"]), "--epochs", str(cfg["epochs"]), "--seed", str(cfg["seed"])],
                             _store_env(store), store)[0]


def sweep_probe(argv: list[str]) -> None:
    """Run the sweep in this process; print the time inside MLflow, Optuna and figure calls
    (outermost only): the tracking API, the study, trials and pruner, storage, sampler, the
    study's plots and importances, legoexp's tracking, registry and plotting code, model export."""
    import functools
    import threading

    from legoexp.ops import timings

    spent, depth = [0.0], [0]

    def timed(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if threading.current_thread() is not threading.main_thread():  # heartbeats: beside the wall time
                return fn(*args, **kwargs)
            depth[0] += 1
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    spent[0] += time.perf_counter() - t
        return wrapper

    def patch(owner, names=None):
        for name in names or [n for n in vars(owner) if not n.startswith("_")]:
            value = vars(owner).get(name)
            if callable(value) and not isinstance(value, type):
                setattr(owner, name, timed(value))

    def patch_all():
        import mlflow
        import optuna

        from legoexp import plots, registry, tracking
        from legoexp.comparison import runs as evidence
        from legoexp.study import claims, design, storage, summary

        patch(mlflow.MlflowClient)
        patch(mlflow, ["log_figure", "register_model", "start_run", "set_experiment", "log_input"])
        patch(mlflow.pyfunc, ["log_model"])
        for owner in (optuna.Study, optuna.Trial, optuna.storages.JournalStorage, optuna.storages.RDBStorage,
                      optuna.samplers.TPESampler, optuna.pruners.WilcoxonPruner, tracking, tracking.runs,
                      registry, registry.versions, design, plots, claims, storage):
            patch(owner)
        patch(summary, ["log_study"])  # not report.compare_and_register: it trains
        patch(evidence, ["log_comparison", "read_comparison"])

    lap = timings.lap

    def lap_and_patch(name):  # patched once the sweep has imported all: imports are timed by -X importtime
        if name == "startup":
            patch_all()
        lap(name)

    timings.lap = lap_and_patch
    from legoexp import sweep

    try:
        sweep.main(argv)
    finally:
        print(json.dumps({"tracking_s": spent[0]}))


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
    p.add_argument("--peer-sweep", action="store_true", help="also time the straightforward sweep "
                   "(`python -m legoexp.bench.peers`: about 3 minutes on the lab's files) and give sweep_vs_peer")
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

    from legoexp.bench.peers import lab_loop, numpy_peer
    from legoexp.data import load_split, open_source
    from legoexp.train import TrainConfig, train

    load_before = os.getloadavg()[0]
    split = load_split(open_source(args.data), "train")
    samples = 10 * len(split)
    fit = _times(lambda: train(TrainConfig(), split.images, split.labels), args.repeat)
    lab = _times(lambda: lab_loop(split.images, split.labels), args.repeat)
    peers = {}
    for threads in (1, 2):
        with threadpool_limits(threads):
            peers[threads] = _times(lambda: numpy_peer(split.images, split.labels), args.repeat)
    rates = matmul_gflops()
    gflops = max(rates.values())
    rows = {"fit_samples_per_s": _rate(fit, samples), "lab_loop_samples_per_s": _rate(lab, samples),
            "numpy_peer_samples_per_s": _rate(peers[1], samples),
            "numpy_peer_2threads_samples_per_s": _rate(peers[2], samples)}
    rows["speedup_vs_lab"] = _ratio(rows["fit_samples_per_s"], rows["lab_loop_samples_per_s"])
    faster = max(rows["numpy_peer_samples_per_s"], rows["numpy_peer_2threads_samples_per_s"], key=lambda r: r["best"])
    rows["vs_numpy_peer"] = _ratio(rows["fit_samples_per_s"], faster)
    bound_s = samples * FLOP_PER_SAMPLE / (gflops * 1e9)
    rows["matmul_gflops"] = {"best": gflops, "median": gflops}
    rows["bound_ratio"] = {"best": min(fit) / bound_s, "median": statistics.median(fit) / bound_s}
    singles, parts = {}, {}
    if not args.fits_only:
        with tempfile.TemporaryDirectory() as store:
            repeated, singles, parts, env, model_uri = whole_runs(args.data, args.trials, store, rest)
            rows |= repeated
            if args.serve:
                singles |= serve(model_uri, env, store, load_split(open_source(args.data), "test").images)
        if args.peer_sweep:
            singles["peer_sweep_wall_s"] = peer_sweep(args.data, args.trials, rest)
            singles["sweep_vs_peer"] = singles["peer_sweep_wall_s"] / singles["sweep_wall_s"]

    machine = _machine(load_before)
    print(f"machine: {machine['cores']} cores, load average {machine['load_before']:.1f} at the start and "
          f"{machine['load_after']:.1f} at the end (this run's own work included); "
          + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()))
    print(f"data: {split.where}, {len(split)} images, 10 epochs at batch 34, {args.repeat} repetitions; "
          f"matmul rate used for the bound: {gflops:.1f} GFLOP/s, the faster of NumPy (1 thread) "
          f"{rates['numpy']:.1f} and MXNet FullyConnected {rates['mxnet']:.1f}, this net's shapes at batch 34; "
          f"vs_numpy_peer is against the faster NumPy peer "
          f"({'2 threads' if faster is rows['numpy_peer_2threads_samples_per_s'] else '1 thread'})")
    print(f"{'':34}{'best':>10}{'median':>10}")
    for name, row in rows.items():
        print(f"{name:34}{row['best']:>10.2f}{row['median']:>10.2f}")
    for name, value in singles.items():
        print(f"{name:34}{value:>10.2f}")
    if parts:
        print("the sweep's wall time from process start (s; also logged on its parent run as time_<part>_s):")
        for name, value in parts.items():
            print(f"  {PART_NAMES.get(name, name):60}{value:>8.2f}")
    if args.json:
        _write_json(args.json, {**rows, **singles, "sweep_parts_s": parts, "machine": machine})
    return 0


PART_NAMES = {
    "startup": "startup: imports, data, fold workers started",
    "setup": "setup: tracking store, study, parent run",
    "search_training": "search: waiting for folds to train",
    "search_bookkeeping": "search: trial runs, asks and tells, pruning",
    "figures": "figures: the study's plots and importances, logged",
    "comparison_training": "comparison: fits and test scores (5 seeds x 2)",
    "comparison_bookkeeping": "comparison: the rest",
    "models": "models: comparison run, model logging, registration",
    "rest": "rest: what no lap closed when the parts were logged",
    "exit": "exit: parent run ended, fold workers stopped, interpreter shutdown",
}


def _ratio(a: dict, b: dict) -> dict:
    return {k: a[k] / b[k] for k in ("best", "median")}


def _write_json(path: str, results: dict) -> None:
    """All or nothing: a reader never sees half a file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, path)


if __name__ == "__main__":
    run_main(main)
