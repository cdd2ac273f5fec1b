"""Cross-validation of one configuration on the training split, folds run in parallel processes.

``fold_indices`` fixes the stratified folds of a sweep (the same for every trial, so the pruner
compares trials fold by fold). ``FoldRunner`` trains and scores folds with the one training
function, in up to ``processes`` worker processes that each hold the training split; it yields
the folds' accuracies in fold order, keeping at most one fold per worker in flight so that a
pruned trial wastes little. A fold's numbers do not depend on the process that computed it.
"""

import multiprocessing
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from sklearn.model_selection import StratifiedKFold

from legoexp.train import TrainConfig

_split: tuple[np.ndarray, np.ndarray] | None = None  # the training split, in each worker


def fold_indices(labels: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels))


def fold_accuracy(config: TrainConfig, images, labels, fit_idx, val_idx) -> float:
    """Train on ``fit_idx``, return the accuracy on ``val_idx``."""
    from legoexp.evaluate import evaluate
    from legoexp.train import train

    fit = train(config, images[fit_idx], labels[fit_idx])
    return evaluate(fit.net, images[val_idx], labels[val_idx]).accuracy


def _init_worker(path: str, parent: int) -> None:
    global _split
    _die_with(parent)
    with np.load(path) as saved:
        _split = (saved["images"], saved["labels"])


def _die_with(parent: int) -> None:
    """End this worker when the sweep process goes, even by ``kill -9`` (it gets no chance to stop us)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # it died before prctl took hold
            os._exit(1)
    except OSError:  # not Linux: watch the parent instead
        def watch():
            while os.getppid() == parent:
                time.sleep(1)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()


def _worker_fold(config, fit_idx, val_idx) -> float:
    from legoexp import faults

    faults.point("fold.train")
    return fold_accuracy(config, *_split, fit_idx, val_idx)


def _folds_dir_prefix() -> str:
    """This process's prefix for its folds directory, after removing those of owners that are gone.

    A sweep killed with ``kill -9`` cannot remove its directory. The name holds the owner's pid and
    its start time (/proc/PID/stat field 22; a reused pid has another), so a directory goes only
    once its owner is proven gone; one named before owners were recorded goes when a day old."""
    import re
    import shutil
    from pathlib import Path

    def started(pid) -> str | None:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rpartition(")")[2].split()[19]  # the fields after the name start at 3
        except (OSError, IndexError):
            return None

    mine = started(os.getpid())
    if mine is None:  # no /proc (not Linux): no owner can be proven gone
        return "legoexp-folds-"
    for path in Path(tempfile.gettempdir()).glob("legoexp-folds-*"):
        owner = re.fullmatch(r"legoexp-folds-(\d+)-(\d+)-.+", path.name)
        try:
            gone = started(owner[1]) != owner[2] if owner else time.time() - path.stat().st_mtime > 86400
        except OSError:  # removed meanwhile by another sweep starting
            continue
        if gone:
            shutil.rmtree(path, ignore_errors=True)
    return f"legoexp-folds-{os.getpid()}-{mine}-"


class FoldRunner:
    """Runs the folds of trials; ``processes`` <= 1 runs them here, in order."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, processes: int):
        self.images, self.labels = images, labels
        self.pool = None
        if processes > 1:
            # The split goes to the workers as a file: a spawned worker killed before it had read a
            # large start-up message would leave this process blocked writing it, for ever.
            self._files = tempfile.TemporaryDirectory(prefix=_folds_dir_prefix())
            path = os.path.join(self._files.name, "split.npz")
            np.savez(path, images=images, labels=labels)
            # spawn: MXNet's engine threads do not survive a fork
            self.pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_init_worker, initargs=(path, os.getpid()))
            self.processes = processes

    def accuracies(self, config: TrainConfig, folds) -> Iterator[float]:
        """Each fold's validation accuracy, in fold order; stop iterating to cancel the rest."""
        if self.pool is None:
            for fit_idx, val_idx in folds:
                yield fold_accuracy(config, self.images, self.labels, fit_idx, val_idx)
            return
        pending = [self.pool.submit(_worker_fold, config, *f) for f in folds[:self.processes]]
        queued = list(folds[self.processes:])
        try:
            while pending:
                accuracy = pending.pop(0).result()
                if queued:
                    pending.append(self.pool.submit(_worker_fold, config, *queued.pop(0)))
                yield accuracy
        finally:
            for future in pending:  # a pruned trial: drop what is still queued
                future.cancel()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self._files.cleanup()
