"""Cross-validation's fold runner: a fold's accuracy and a comparison fit's network are the same
whichever process made them, and what it leaves on disk."""

import os
import subprocess
import tempfile
import time

import numpy as np
import pytest

from legoexp.data import load_split, open_source
from legoexp.study.folds import FoldRunner, fold_indices
from legoexp.train import TrainConfig, train

CONFIGS = [TrainConfig(epochs=2, seed=3), TrainConfig(epochs=2, seed=4, hidden1=20, batch_size=16)]


@pytest.fixture(scope="module")
def split():
    return load_split(open_source("synthetic"), "train")


def test_workers_give_the_numbers_of_this_process_fold_by_fold_and_fit_by_fit(split):
    folds = fold_indices(split.labels, 3, seed=0)
    here, pool = FoldRunner(split.images, split.labels, 1), FoldRunner(split.images, split.labels, 2)
    try:
        for config in CONFIGS:
            assert list(pool.accuracies(config, folds)) == list(here.accuracies(config, folds))
        for theirs, config in zip(pool.fits(CONFIGS), CONFIGS):
            mine = train(config, split.images, split.labels).net
            for a, b in zip(mine.collect_params().values(), theirs.collect_params().values()):
                assert np.array_equal(a.data().asnumpy(), b.data().asnumpy())
    finally:
        pool.close()
    # the CPU their folds and fits took, wherever they ran (the workers' is counted as each is done)
    assert here.training_cpu_s > 0 and pool.training_cpu_s > 0


def test_a_trial_stopped_after_a_round_never_starts_the_next(split):
    """Pruned after the first round (one fold per worker): the other folds are never handed out."""
    folds = fold_indices(split.labels, 5, seed=0)
    pool = FoldRunner(split.images, split.labels, 2)
    try:
        results = pool.accuracies(CONFIGS[0], folds)
        first_round = [next(results), next(results)]
        results.close()
        assert all(0 <= a <= 1 for a in first_round)
        submitted = pool.pool._queue_count  # work items the pool was ever given
        assert submitted == 2 + 2  # the two start-up tasks and the first round
    finally:
        pool.close()


def _started(pid: int) -> str:
    """Field 22 of /proc/PID/stat: when the process started, in clock ticks since boot."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[19]


def test_a_fold_runner_removes_the_folds_directories_of_owners_that_are_gone(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    child = subprocess.Popen(["true"])
    dead = f"legoexp-folds-{child.pid}-{_started(child.pid)}-a1b2"  # read before it is reaped
    child.wait()
    me, parent = os.getpid(), os.getppid()
    live = f"legoexp-folds-{me}-{_started(me)}-c3d4"
    names = {
        dead: "gone",
        f"legoexp-folds-{me}-{int(_started(me)) - 1}-e5f6": "gone",  # a pid reused: the owner is gone
        live: "kept",
        f"legoexp-folds-{parent}-{_started(parent)}-g7h8": "kept",
        "legoexp-folds-old2days": "gone",  # named before owners were recorded, two days old
        "legoexp-folds-oldtoday": "kept",
        "legoexp-other-1-2-x": "kept",
    }
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "split.npz").write_bytes(b"x" * 1000)
    two_days_ago = time.time() - 2 * 86400
    os.utime(tmp_path / "legoexp-folds-old2days", (two_days_ago, two_days_ago))

    kept = {name for name, fate in names.items() if fate == "kept"}
    runner = FoldRunner(np.zeros((10, 48, 48), np.uint8), np.arange(10), processes=2)
    try:
        (own,) = {p.name for p in tmp_path.iterdir()} - kept
        assert own.startswith(f"legoexp-folds-{me}-{_started(me)}-")
        assert (tmp_path / live / "split.npz").read_bytes() == b"x" * 1000
    finally:
        runner.close()
    assert {p.name for p in tmp_path.iterdir()} == kept
