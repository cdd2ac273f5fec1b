"""The built-in synthetic LEGO set: shapes, balance, determinism across processes, and a real task."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from legoexp.classes import IMAGE_SHAPE, NUM_CLASSES
from legoexp.data.synthetic import generate, generate_split, synthetic_split

REPO = Path(__file__).resolve().parents[1]
DIGEST_CODE = """
import hashlib
from legoexp.data.synthetic import synthetic_split
h = hashlib.sha256()
for a in synthetic_split(7, n_train=60, n_test=30):
    h.update(str((a.shape, a.dtype.str)).encode())
    h.update(a.tobytes())
print(h.hexdigest())
"""


@pytest.fixture(scope="module")
def split():
    return synthetic_split(0)


def test_generate_returns_uint8_nhwc_images_and_labels_in_range():
    images, labels = generate(23, seed=5)
    assert images.shape == (23, *IMAGE_SHAPE, 1) and images.dtype == np.uint8
    assert labels.shape == (23,) and labels.dtype == np.uint8
    assert labels.min() >= 0 and labels.max() < NUM_CLASSES


@pytest.mark.parametrize("n", [0, 7, 10, 23, 451])
def test_generate_balances_classes_to_within_one_image(n):
    _, labels = generate(n, seed=1)
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    assert counts.sum() == n and counts.max() - counts.min() <= 1


def test_generate_shuffles_labels_rather_than_cycling_them():
    _, labels = generate(100, seed=2)
    assert not np.array_equal(labels, np.arange(100) % NUM_CLASSES)


def test_generate_rejects_a_negative_count():
    with pytest.raises(ValueError):
        generate(-1, seed=0)


def test_synthetic_split_has_the_lab_sizes_by_default(split):
    train_images, train_labels, test_images, test_labels = split
    assert train_images.shape == (451, *IMAGE_SHAPE, 1) and train_labels.shape == (451,)
    assert test_images.shape == (150, *IMAGE_SHAPE, 1) and test_labels.shape == (150,)


def test_generate_split_draws_one_split_equal_to_that_of_synthetic_split(split):
    for name, (images, labels) in (("train", split[:2]), ("test", split[2:])):
        got_images, got_labels = generate_split(name, 0)
        assert np.array_equal(got_images, images) and np.array_equal(got_labels, labels)
    with pytest.raises(ValueError, match="unknown split"):
        generate_split("validation", 0)


def test_same_seed_gives_identical_arrays_in_this_process():
    first, second = synthetic_split(3, 40, 20), synthetic_split(3, 40, 20)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


def test_same_seed_gives_byte_identical_arrays_in_a_fresh_process():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    digests = set()
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", DIGEST_CODE], env=env, cwd=REPO,
                             capture_output=True, text=True, check=True, timeout=120)
        digests.add(out.stdout.strip())
    h = hashlib.sha256()
    for a in synthetic_split(7, n_train=60, n_test=30):
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    assert digests == {h.hexdigest()}


def test_different_seeds_give_different_images():
    a, _ = generate(20, seed=0)
    b, _ = generate(20, seed=1)
    assert not {im.tobytes() for im in a} & {im.tobytes() for im in b}
    assert not np.array_equal(synthetic_split(0, 20, 20)[2], synthetic_split(1, 20, 20)[2])


def test_train_and_test_share_no_identical_image(split):
    train_images, _, test_images, _ = split
    train = {im.tobytes() for im in train_images}
    assert len(train) == len(train_images)
    assert not train & {im.tobytes() for im in test_images}


def test_images_are_bright_bricks_on_a_dark_ground(split):
    images = split[0][..., 0].astype(np.float64)
    assert images.mean() < 50  # the lab's photos average ~30 of 255
    assert images.max() == 255 and np.median(images.max(axis=(1, 2))) > 180
    border = np.concatenate([images[:, :3].ravel(), images[:, -3:].ravel(),
                             images[:, :, :3].ravel(), images[:, :, -3:].ravel()])
    centre = images[:, 18:30, 18:30]
    assert np.median(border) < 30 and centre.mean() > 3 * border.mean()


def test_classes_are_distinguishable_by_their_mean_images_but_not_trivially(split):
    train_images, train_labels, test_images, test_labels = split
    train = train_images[..., 0].reshape(len(train_labels), -1).astype(np.float64)
    test = test_images[..., 0].reshape(len(test_labels), -1).astype(np.float64)
    centroids = np.stack([train[train_labels == k].mean(axis=0) for k in range(NUM_CLASSES)])
    gaps = np.linalg.norm(centroids[:, None] - centroids[None], axis=2)[~np.eye(NUM_CLASSES, dtype=bool)]
    assert gaps.min() > 100
    nearest = np.linalg.norm(test[:, None] - centroids[None], axis=2).argmin(axis=1)
    accuracy = (nearest == test_labels).mean()
    assert 0.5 < accuracy < 0.98  # chance is 0.1; pose and light jitter keep it a real task
