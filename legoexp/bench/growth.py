"""``python -m legoexp.bench.growth``: does a trial's bookkeeping cost more when the study is larger?

``growth()`` runs one long study (``python -m legoexp.sweep``, 500 trials of 1 epoch and 2 folds on
the generated data by default) in a process of its own, on a new tracking store (SQLite) and Optuna
journal of its own, and compares the per-trial bookkeeping of its first trials with its last.

Bookkeeping, precisely: the sweep's search process runs one step per trial: it reports the trial
before, claims and starts the next one (lock, ``ask``, sampling, its MLflow run and params), then
waits for the current trial's folds, tells Optuna and ends its run. A trial's step is the wall time
of the search process from the previous trial's ``Study.tell`` returning to this trial's returning;
its bookkeeping is that step minus the time the process spent waiting for folds to train in it
(``ops.timings.training``, the timer the sweep's ``search_training`` part comes from). What is left
is everything the search process does that is not training: Optuna, MLflow, legoexp's own reads of
the study, the progress lines, the waits for the disk (the journal's fsyncs, MLflow's SQLite
commits) and for a CPU. The folds train in fold processes and may overlap that bookkeeping; with 1
epoch they are short, so the bookkeeping is the study's pace. The first trial has no step (nothing
was told before it); a window of trials ``[a, b)`` averages (the mean) the steps of the trials told
in that position, a-th to (b-1)-th.

The wall time is what a user waits, but on a shared machine it also moves with the other processes'
load over the minutes the study runs (seen: 1.49x and 0.79x in two runs ten minutes apart, with no
change to the cost between them). The CPU time of the search process's main thread over a step
(``time.thread_time``: waiting for folds, a lock or the disk costs none) is its bookkeeping's work,
far less sensitive to that load; the ``_cpu`` rows give it, and its growth is the steadier figure
to compare.

Rows (for ``windows=((0, 50), (450, 500))``):

- ``bookkeeping_ms_trials_0_50``, ``bookkeeping_ms_trials_450_500``: mean bookkeeping per trial, ms;
- ``bookkeeping_growth``: the second over the first (1.0 = flat in the study's size);
- ``sampler_ms_trials_0_50``, ``sampler_ms_trials_450_500``: of that bookkeeping, the mean time
  inside the study's sampler (Optuna's TPE: ``infer_relative_search_space``, ``before_trial``,
  ``sample_relative``, ``sample_independent``, ``after_trial``), which reads every trial of the
  study at each ask by design;
- ``bookkeeping_growth_without_sampler``: the growth of what is left when the sampler's part is
  taken out of both windows;
- ``bookkeeping_cpu_ms_trials_0_50``, ``bookkeeping_cpu_ms_trials_450_500``, ``sampler_cpu_ms_...``,
  ``bookkeeping_cpu_growth``, ``bookkeeping_cpu_growth_without_sampler``: the same in CPU time;
- ``trial_ms_trials_0_50``, ``trial_ms_trials_450_500``: the mean step itself, training waits included.

Timings on a shared machine are noisy: compare the rows of one run, not across runs.
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SAMPLER_METHODS = ("infer_relative_search_space", "before_trial", "sample_relative", "sample_independent",
                   "after_trial")


def growth(data: str = "synthetic", trials: int = 500, folds: int = 2,
           windows: tuple[tuple[int, int], ...] = ((0, 50), (450, 500)), epochs: int = 1, seed: int = 42,
           timeout: float = 3600) -> dict[str, float]:
    """Run a ``trials``-trial study (``epochs`` epochs, ``folds`` folds, seed ``seed``) on ``data`` in a
    subprocess with its own temporary stores, and return the rows named in the module's docstring for
    the two ``windows`` of trial positions (the second is compared with the first)."""
    if len(windows) != 2 or not all(0 <= a < b <= trials for a, b in windows):
        raise ValueError(f"windows={windows!r}: expected two [a, b) ranges within the {trials} trials")
    from legoexp.bench.commands import _store_env

    with tempfile.TemporaryDirectory(prefix="legoexp-growth-") as store:
        out = Path(store) / "steps.json"
        args = [sys.executable, "-m", "legoexp.bench.growth", "--child", str(out), "--",
                "--data", data, "--trials", str(trials), "--folds", str(folds), "--epochs", str(epochs),
                "--seed", str(seed), "--seeds", "2", "--quiet", "--study-name", "growth"]
        proc = subprocess.run(args, env=_store_env(store), cwd=store, capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        steps = json.loads(out.read_text())
    return rows(steps, windows)


def rows(steps: list[list[float]], windows) -> dict[str, float]:
    """The rows from the child's record: per ``Study.tell`` in order, [trial number, perf_counter,
    main thread's CPU seconds, training seconds, sampler seconds, sampler CPU seconds], the last four
    counted since the search process started."""
    if len(steps) < max(b for _, b in windows):
        raise RuntimeError(f"the study told {len(steps)} trials, fewer than the windows {windows!r} need")
    # trial k's step is per_trial[k - 1]: (wall, bookkeeping, sampler, bookkeeping CPU, sampler CPU)
    per_trial = [(t - t0, (t - t0) - (w - w0), s - s0, c - c0, sc - sc0)
                 for (_, t0, c0, w0, s0, sc0), (_, t, c, w, s, sc) in zip(steps, steps[1:])]
    out, means = {}, []
    for a, b in windows:
        window = per_trial[max(a, 1) - 1:b - 1]
        mean = [1000 * statistics.fmean(x[i] for x in window) for i in range(5)]
        out |= {f"bookkeeping_ms_trials_{a}_{b}": mean[1], f"sampler_ms_trials_{a}_{b}": mean[2],
                f"bookkeeping_cpu_ms_trials_{a}_{b}": mean[3], f"sampler_cpu_ms_trials_{a}_{b}": mean[4],
                f"trial_ms_trials_{a}_{b}": mean[0]}
        means.append(mean)
    first, last = means
    out["bookkeeping_growth"] = last[1] / first[1]
    out["bookkeeping_growth_without_sampler"] = (last[1] - last[2]) / (first[1] - first[2])
    out["bookkeeping_cpu_growth"] = last[3] / first[3]
    out["bookkeeping_cpu_growth_without_sampler"] = (last[3] - last[4]) / (first[3] - first[4])
    return out


def _child(out: str, argv: list[str]) -> int:
    """Run the sweep here with ``argv``, recording each ``Study.tell`` (see ``rows``) into ``out``."""
    import optuna

    from legoexp.ops import timings

    steps: list[list[float]] = []
    spent = {"training": 0.0, "sampler": 0.0, "sampler_cpu": 0.0}
    training = timings.training

    @contextlib.contextmanager
    def timed_training():
        started = time.perf_counter()
        try:
            with training():
                yield
        finally:
            spent["training"] += time.perf_counter() - started

    def timed(fn):
        def wrapper(*args, **kwargs):
            if threading.current_thread() is not threading.main_thread():
                return fn(*args, **kwargs)
            started, cpu = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent["sampler"] += time.perf_counter() - started
                spent["sampler_cpu"] += time.thread_time() - cpu
        return wrapper

    tell = optuna.Study.tell

    def recorded_tell(self, trial, *args, **kwargs):
        frozen = tell(self, trial, *args, **kwargs)
        if threading.current_thread() is threading.main_thread():  # the search's tells (thread_time is per thread)
            steps.append([frozen.number, time.perf_counter(), time.thread_time(), spent["training"],
                          spent["sampler"], spent["sampler_cpu"]])
        return frozen

    timings.training = timed_training
    optuna.Study.tell = recorded_tell
    for name in SAMPLER_METHODS:
        setattr(optuna.samplers.TPESampler, name, timed(getattr(optuna.samplers.TPESampler, name)))
    from legoexp import sweep

    try:
        return sweep.main_or_storage_error(argv)
    finally:
        tmp = f"{out}.tmp"
        Path(tmp).write_text(json.dumps(steps))
        os.replace(tmp, out)


def _window(text: str) -> tuple[int, int]:
    a, _, b = text.partition(":")
    return int(a), int(b)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m legoexp.bench.growth", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="synthetic", help="as for the sweep (default: synthetic)")
    p.add_argument("--trials", type=int, default=500, help="trials of the study (default 500)")
    p.add_argument("--folds", type=int, default=2, help="folds per trial (default 2)")
    p.add_argument("--epochs", type=int, default=1, help="epochs per fold (default 1)")
    p.add_argument("--windows", nargs=2, type=_window, default=[(0, 50), (450, 500)], metavar="A:B",
                   help="the two windows of trials compared (default 0:50 450:500)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p.add_argument("--child", metavar="OUT", help=argparse.SUPPRESS)
    args, rest = p.parse_known_args(argv)
    if args.child:
        return _child(args.child, rest[1:] if rest[:1] == ["--"] else rest)
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    if not all(0 <= a < b <= args.trials for a, b in args.windows):
        p.error(f"--windows {' '.join(f'{a}:{b}' for a, b in args.windows)}: each A:B must lie within the "
                f"{args.trials} trials (0 <= A < B <= --trials)")
    started = time.perf_counter()
    result = growth(args.data, args.trials, args.folds, tuple(args.windows), args.epochs)
    print(f"{args.trials} trials, {args.epochs} epoch(s), {args.folds} folds on {args.data}, in "
          f"{time.perf_counter() - started:.0f} s; per trial, mean over each window:")
    for name, value in result.items():
        print(f"{name:40}{value:>10.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    from legoexp.ops.command import run_main

    run_main(main)
