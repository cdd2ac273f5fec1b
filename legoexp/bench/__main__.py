"""``python -m legoexp.bench``: legoexp's speed against the lab's loop, a NumPy peer, the hardware, the
straightforward sweep and a practised user's.

In one run, on the lab's files when given (else the generated set), it measures: the one training
function (10 epochs, batch 34), the lab's own loop and the same net in NumPy at one and at two BLAS
threads (``legoexp.bench.peers``); the rate of this net's matmuls and how far the fit is from the time
that rate implies for its 1.23 MFLOP per sample; three whole baseline runs (the first creates the
tracking store) and a whole 30-trial sweep, each from process start, with the sweep's wall time
split into its parts (``legoexp.ops.timings``, as logged on its parent run) and the share spent on
anything but training and scoring models (``overhead_share``); then the same sweep again,
instrumented, for the share of its wall time spent in MLflow, Optuna and figures
(``tracking_share``: their imports, calls, plots, importances, model export); with
``--peer-sweep``, the straightforward sweep (``legoexp.bench.peers``) and the practised user's
(``legoexp.bench.skilled``: hybridized Gluon, TPE with Wilcoxon pruning, 2 processes on a journal,
nested runs), each from process start, and ``sweep_vs_peer``, ``sweep_vs_skilled_peer``; with
``--serve``, latency and throughput of ``mlflow models serve``; with ``--growth``, a trial's
bookkeeping early and late in a 500-trial study (``legoexp.bench.growth``). Timings are repeated (min and
median); compare ratios measured in one run, not figures across machines.
"""

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

from legoexp.bench.commands import PART_NAMES, peer_sweep, serve, skilled_peer_sweep, sweep_probe, times, whole_runs
from legoexp.ops.command import run_main

FLOP_PER_SAMPLE = 1.23e6  # forward 2*(2304*128 + 128*64 + 64*10), weight grads, 2 small input grads


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
        best = min(times(lambda: [fn() for _ in range(repeat)], 5))
        return flop * repeat / best / 1e9

    with threadpool_limits(1):
        numpy_rate = rate(numpy_round)
    return {"numpy": numpy_rate, "mxnet": rate(mxnet_round)}


def _rate(times: list[float], samples: int) -> dict:
    return {"best": samples / min(times), "median": samples / statistics.median(times)}


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
                   "(`python -m legoexp.bench.peers`: about 3 minutes on the lab's files) and the practised user's "
                   "(`python -m legoexp.bench.skilled`: about 1 minute), and give sweep_vs_peer and sweep_vs_skilled_peer")
    p.add_argument("--growth", action="store_true", help="also time a trial's bookkeeping at trials 0-50 and "
                   "450-500 of a 500-trial study on the generated data, 1 epoch, 2 folds (`python -m "
                   "legoexp.bench.growth`: a few minutes), and give bookkeeping_growth")
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

    from legoexp.ops.proc import load_mxnet_on_every_core

    load_mxnet_on_every_core()  # as the baseline trains; the NumPy peer gets its two BLAS threads too
    from legoexp.bench.peers import lab_loop_times, numpy_peer
    from legoexp.data import load_split, open_source
    from legoexp.train import TrainConfig, train

    load_before = os.getloadavg()[0]
    split = load_split(open_source(args.data), "train")
    samples = 10 * len(split)
    fit = times(lambda: train(TrainConfig(), split.images, split.labels), args.repeat)
    # the lab's loop as the notebook runs it: in a process of its own, MXNet on its own default threads
    # (it is slower on every core: 5.5-5.7k against 8.4k samples/s)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as lab_process:
        lab = lab_process.submit(lab_loop_times, args.data, args.repeat).result()
    peers = {}
    for threads in (1, 2):
        with threadpool_limits(threads):
            peers[threads] = times(lambda: numpy_peer(split.images, split.labels), args.repeat)
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
            singles["skilled_peer_sweep_wall_s"] = skilled_peer_sweep(args.data, args.trials, rest)
            singles["sweep_vs_skilled_peer"] = singles["skilled_peer_sweep_wall_s"] / singles["sweep_wall_s"]
    if args.growth:
        from legoexp.bench.growth import growth

        singles |= growth()

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
