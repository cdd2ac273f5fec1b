"""Cross-validation of one configuration on the training split, folds run in parallel processes.

``fold_indices`` fixes the stratified folds of a sweep (the same for every trial, so the pruner
compares trials fold by fold). ``FoldRunner`` trains and scores folds with the one training
function, in up to ``processes`` worker processes that each hold the training split; it yields
the folds' accuracies in fold order. Several trials can be in its hands at once (the sweep starts
the next trial before the current one has its last folds): the oldest trial's folds go first, in
rounds of one per worker, so that a pruned trial wastes little, and a worker that would wait takes
a later trial's next fold. Its workers start (and load MXNet) as soon as it is made, and they
also train the comparison's fits on the whole training split (``fits``). A fold's or a fit's
numbers do not depend on the process that computed it, nor on when it ran.
"""

from __future__ import annotations

import collections
import gc
import importlib
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import TYPE_CHECKING

import numpy as np

from legoexp.ops import timings
from legoexp.ops.proc import die_with, quietly, signals_ignored, start_ticks

if TYPE_CHECKING:  # a worker sets MXNet up before it first loads it: see _init_worker
    from legoexp.train import TrainConfig

_split: tuple[np.ndarray, np.ndarray] | None = None  # the training split, in each worker


def fold_indices(labels: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedKFold  # here: the workers never need scikit-learn

    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels))


def fold_accuracy(config: TrainConfig, images, labels, fit_idx, val_idx) -> float:
    """Train on ``fit_idx``, return the accuracy on ``val_idx``."""
    from legoexp.evaluate import evaluate
    from legoexp.train import train

    fit = train(config, images[fit_idx], labels[fit_idx], reuse=True)  # the net is scored, then dropped
    return evaluate(fit.net, images[val_idx], labels[val_idx]).accuracy


def _init_worker(path: str, parent: int) -> None:
    global _split
    die_with(parent)
    with np.load(path) as saved:
        _split = (saved["images"], saved["labels"])
    # ``train`` waits for every step (its updates are NumPy's), so MXNet's engine thread only adds a
    # hand-over per step, which costs most when the cores are busy: here they are, with one worker
    # per core, so each runs its operators itself, on one OpenMP thread. Same operators, same numbers.
    os.environ.setdefault("MXNET_ENGINE_TYPE", "NaiveEngine")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    importlib.import_module("legoexp.evaluate")  # MXNet loads now, while the sweep sets up, not on the first fold
    quietly(lambda: importlib.import_module("mxnet").nd.waitall())  # the engine starts, and logs that it did
    gc.freeze()  # what is loaded stays: the collector need not look at it again, nor at exit


def _timed(work: Callable, *args) -> tuple:
    """``work(*args)`` and the CPU seconds this process spent on it: what a worker returns."""
    started = time.process_time()
    result = work(*args)
    return result, time.process_time() - started


def _worker_fold(config, fit_idx, val_idx) -> tuple[float, float]:
    from legoexp.ops import faults

    faults.point("fold.train")
    return _timed(fold_accuracy, config, *_split, fit_idx, val_idx)


def _worker_fit(config) -> tuple[list[np.ndarray], float]:
    from legoexp.train import param_values, train

    return _timed(lambda: param_values(train(config, *_split).net))


def _started() -> None:
    """A first task for each worker: spawns it now (the pool starts workers on demand)."""


def _net(config: TrainConfig, weights: list[np.ndarray]):
    from mxnet import nd

    from legoexp.model import build_net

    net = build_net(config.hidden1, config.hidden2)
    for param, value in zip(net.collect_params().values(), weights):
        param.set_data(nd.array(value, dtype=value.dtype))
    return net


def worker_count(folds: int, jobs: int) -> int:
    """Fold workers for one of ``jobs`` sweep processes on this machine: its share of the cores."""
    return min(folds, max(1, len(os.sched_getaffinity(0)) // jobs))


def _folds_dir_prefix() -> str:
    """This process's prefix for its folds directory, after removing those of owners that are gone.

    A sweep killed with ``kill -9`` cannot remove its directory. The name holds the owner's pid and
    its start time (``ops.proc.start_ticks``; a reused pid has another), so a directory goes only
    once its owner is proven gone; one named before owners were recorded goes when a day old."""
    import re
    import shutil
    from pathlib import Path

    mine = start_ticks(os.getpid())
    if mine is None:  # no /proc (not Linux): no owner can be proven gone
        return "legoexp-folds-"
    for path in Path(tempfile.gettempdir()).glob("legoexp-folds-*"):
        owner = re.fullmatch(r"legoexp-folds-(\d+)-(\d+)-.+", path.name)
        try:
            gone = start_ticks(owner[1]) != owner[2] if owner else time.time() - path.stat().st_mtime > 86400
        except OSError:  # removed meanwhile by another sweep starting
            continue
        if gone:
            shutil.rmtree(path, ignore_errors=True)
    return f"legoexp-folds-{os.getpid()}-{mine}-"


class _Folds:
    """One trial's folds in a ``FoldRunner``'s hands, and the iterator of their accuracies: the folds
    handed to a worker (in fold order), and how many the trial has released (its rounds so far)."""

    def __init__(self, runner: FoldRunner, config: TrainConfig, folds: list):
        self.runner, self.config, self.folds = runner, config, folds
        self.released = runner.processes
        self.futures: list = []
        self.next = 0

    def __iter__(self):
        return self

    def __next__(self) -> float:
        k, runner = self.next, self.runner
        if k == len(self.folds) or self not in runner._trials:
            self.close()
            raise StopIteration
        if k == self.released:  # asked past the round: the next one
            self.released += runner.processes
            runner._hand_out()
        with timings.training():
            while k >= len(self.futures) or not self.futures[k].done():
                wait(runner._handed, return_when=FIRST_COMPLETED)
                runner._hand_out()
            accuracy = self.futures[k].result()[0]
        self.next += 1
        return accuracy

    def close(self) -> None:
        """Stop: folds not started are dropped (the pool cannot stop one that runs)."""
        if self in self.runner._trials:
            self.runner._trials.remove(self)
        for future in self.futures:
            future.cancel()


class FoldRunner:
    """Runs the folds of trials; ``processes`` <= 1 runs them here, in order. ``training_cpu_s``: the CPU
    seconds its folds and fits have taken so far, wherever they ran (a pruned trial's too)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, processes: int):
        self.images, self.labels = images, labels
        self.pool = None
        self.training_cpu_s = 0.0
        self._trials: list[_Folds] = []  # oldest first
        self._handed: list = []  # futures of folds handed to the pool and not done
        self._fits: dict = {}  # config -> futures of its fits handed out ahead (start_fits)
        if processes > 1:
            # The split goes to the workers as a file: a spawned worker killed before it had read a
            # large start-up message would leave this process blocked writing it, for ever.
            self._files = tempfile.TemporaryDirectory(prefix=_folds_dir_prefix())
            path = os.path.join(self._files.name, "split.npz")
            np.savez(path, images=images, labels=labels)
            # spawn: MXNet's engine threads do not survive a fork. Ctrl-C and SIGTERM are this process's
            # to handle (it stops the pool), so the fold processes start with both ignored: a signal to
            # the whole group (a terminal's Ctrl-C, Slurm's scancel) prints nothing and breaks nothing there.
            with signals_ignored():
                self.pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_init_worker, initargs=(path, os.getpid()))
                self.processes = processes
                for _ in range(processes):
                    self.pool.submit(_started)

    def accuracies(self, config: TrainConfig, folds) -> Iterator[float]:
        """Each fold's validation accuracy, in fold order; stop iterating to cancel the rest.

        The first round (one fold per worker) is handed out at once, before the first accuracy is
        asked for; the oldest trial's next round when the caller asks past its current one, so a
        trial pruned on what a round showed never starts the next (the pool cannot stop a fold once
        it runs). A trial that is not the oldest may run a round ahead of what its caller asked
        for: it fills the time a worker would otherwise wait for the oldest trial's next round, or
        for its caller."""
        if self.pool is None:
            return self._here(config, folds)
        trial = _Folds(self, config, list(folds))
        self._trials.append(trial)
        self._hand_out()
        return trial

    def _hand_out(self) -> None:
        """Keep every worker busy and one fold waiting for the first that is free (one is free while
        this process does bookkeeping): the oldest trial's released folds first, then later trials'."""
        self._handed = [f for f in self._handed if not f.done()]
        while len(self._handed) <= self.processes:
            ready = (t for i, t in enumerate(self._trials)
                     if len(t.futures) < min(t.released + (i > 0) * self.processes, len(t.folds)))
            trial = next(ready, None)
            if trial is None:
                return
            future = self._submit(_worker_fold, trial.config, *trial.folds[len(trial.futures)])
            trial.futures.append(future)
            self._handed.append(future)

    def _here(self, config: TrainConfig, folds) -> Iterator[float]:
        for fit_idx, val_idx in folds:
            with timings.training():
                accuracy, cpu = _timed(fold_accuracy, config, self.images, self.labels, fit_idx, val_idx)
            self.training_cpu_s += cpu
            yield accuracy

    def start_folds(self, jobs: list[tuple[TrainConfig, np.ndarray, np.ndarray]]) -> Callable[[], list[float]]:
        """Hand every ``(config, fit_idx, val_idx)`` fold to the workers now (no rounds, no pruning: a
        re-scoring's); the function returned waits for their accuracies, in order."""
        if self.pool is None:
            return lambda: list(self._here_each(jobs))
        futures = [self._submit(_worker_fold, config, fit_idx, val_idx) for config, fit_idx, val_idx in jobs]

        def accuracies() -> list[float]:
            with timings.training():
                return [future.result()[0] for future in futures]
        return accuracies

    def _here_each(self, jobs) -> Iterator[float]:
        for config, fit_idx, val_idx in jobs:
            yield from self._here(config, [(fit_idx, val_idx)])

    def fits(self, configs: list[TrainConfig]) -> Iterator:
        """The networks ``train`` fits on the whole training split for each config, in order; all
        of them handed to the workers at once (or before, by ``start_fits``)."""
        if self.pool is None:
            return (self._fit_here(c) for c in configs)
        self.start_fits(configs)
        futures = [self._fits[c].pop(0) for c in configs]
        return (_net(c, f.result()[0]) for c, f in zip(configs, futures))

    def _fit_here(self, config: TrainConfig):
        from legoexp.train import train

        result, cpu = _timed(train, config, self.images, self.labels)
        self.training_cpu_s += cpu
        return result.net

    def start_fits(self, configs: list[TrainConfig]) -> None:
        """Hand ``configs``' fits to the workers now, for a later ``fits`` of the same configs: they
        train while this process does something else."""
        if self.pool is None:
            return
        for config, count in collections.Counter(configs).items():
            started = self._fits.setdefault(config, [])
            started += [self._submit(_worker_fit, config) for _ in range(count - len(started))]

    def _submit(self, work: Callable, *args):
        """``work(*args)`` in a worker; its CPU seconds are counted once it is done (read or not)."""
        future = self.pool.submit(work, *args)
        future.add_done_callback(self._count)
        return future

    def _count(self, future) -> None:
        if not future.cancelled() and future.exception() is None:
            self.training_cpu_s += future.result()[1]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self._files.cleanup()
