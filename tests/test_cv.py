"""Fold workers: a fold's accuracy and a comparison fit's network are the same whichever process made them."""

import numpy as np
import pytest

from legoexp.cv import FoldRunner, fold_indices
from legoexp.data import load_split, open_source
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
