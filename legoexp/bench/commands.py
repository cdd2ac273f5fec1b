"""The benchmark's whole commands, each timed from process start as a user runs it.

Baseline runs through ``mlflow run``, the sweep (its wall time and the parts its parent run logs),
the same sweep again instrumented for the time inside MLflow, Optuna and figures
(``sweep_probe``), the straightforward peer sweep (``legoexp.bench.peers``), the practised user's
(``legoexp.bench.skilled``), and a served model's
latency and throughput. Each runs in a process of its own on a tracking store of its own.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PART_NAMES = {
    "startup": "startup: imports, data, fold workers started",
    "setup": "setup: tracking store, study, parent run",
    "search_training": "search: waiting for folds to train",
    "search_bookkeeping": "search: trial runs, asks and tells, pruning",
    "figures": "figures: the study's plots and importances, logged",
    "selection_training": "selection: re-scoring the candidates on fresh folds",
    "selection_bookkeeping": "selection: latency, the rescoring run",
    "comparison_training": "comparison: fits and test scores (5 seeds x 2)",
    "comparison_bookkeeping": "comparison: the rest",
    "models": "models: comparison run, model logging, registration",
    "rest": "rest: what no lap closed when the parts were logged",
    "exit": "exit: parent run ended, fold workers stopped, interpreter shutdown",
}



def times(fn, repeat: int) -> list[float]:
    """Seconds of ``repeat`` calls of ``fn``, after one warm-up call."""
    fn()  # warm-up: graph building, allocation
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _command_wall(args: list[str], env: dict, cwd) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t, proc


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's children that have ended, theirs included: a
    command's, read before and after it, with its fold workers (which it waits for)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


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
    cpu_before = _children_cpu()
    sweep_s = _command_wall([sys.executable, "-m", "legoexp.sweep", "--data", data, "--trials", str(trials),
                             *sweep_options], env, store)[0]
    sweep_cpu_s = _children_cpu() - cpu_before
    parts, logged_cpu = _logged_parts(env["MLFLOW_TRACKING_URI"])
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
               "sweep_tracking_imports_s": imports_s, "sweep_cpu_s": sweep_cpu_s,
               # how much of the machine the sweep kept busy: what no reordering of its work can win back
               "sweep_cores_busy": sweep_cpu_s / (sweep_s * len(os.sched_getaffinity(0))),
               # what that CPU did: trained and scored models (in the fold workers), or the rest
               "sweep_training_cpu_share": logged_cpu["cpu_training_s"] / sweep_cpu_s,
               "sweep_main_cpu_share": logged_cpu["cpu_main_s"] / sweep_cpu_s}
    return repeated, singles, parts, env, uri


def _logged_parts(tracking_uri: str) -> tuple[dict[str, float], dict[str, float]]:
    """The parts of the sweep's wall time its parent run logged (``time_<part>_s``), in lap order, and
    its CPU metrics (``cpu_main_s``, ``cpu_training_s``)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()],
                               "tags.`legoexp.kind` = 'sweep'")
    logged = {k[len("time_"):-len("_s")]: v for k, v in run.data.metrics.items()
              if k.startswith("time_") and k.endswith("_s") and k != "time_total_s"}
    order = list(PART_NAMES)
    parts = dict(sorted(logged.items(), key=lambda part: order.index(part[0]) if part[0] in order else len(order)))
    return parts, {k: v for k, v in run.data.metrics.items() if k.startswith("cpu_")}


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
    return _peer_wall("legoexp.bench.peers", data, trials, sweep_options)


def skilled_peer_sweep(data: str, trials: int, sweep_options: list[str]) -> float:
    """Wall time of `python -m legoexp.bench.skilled` (the practised user's study) from process start, as
    ``peer_sweep``: the sweep's folds, epochs and seed, a new tracking store and journal of its own."""
    return _peer_wall("legoexp.bench.skilled", data, trials, sweep_options)


def _peer_wall(module: str, data: str, trials: int, sweep_options: list[str]) -> float:
    from legoexp import config

    options = argparse.ArgumentParser()
    config.add_options(options, "sweep")
    ns, _ = options.parse_known_args(["--data", data, "--trials", str(trials), *sweep_options])
    cfg = config.resolve("sweep", config.settings("sweep"), ns.config, config.options(ns, "sweep"))
    with tempfile.TemporaryDirectory() as store:
        return _command_wall([sys.executable, "-m", module, "--data", data, "--trials", str(trials),
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
        one = times(lambda: post(images[:1]), 200)
        batch = times(lambda: post(images[:150]), 10)
    finally:
        server.terminate()
        server.wait(timeout=30)
    ms = sorted(t * 1000 for t in one)
    return {"serve_p50_ms": ms[len(ms) // 2], "serve_p95_ms": ms[int(len(ms) * 0.95)],
            "serve_batch150_per_s": 150 / statistics.median(batch)}
