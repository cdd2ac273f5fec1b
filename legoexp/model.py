"""The lab's network: Flatten, Dense(hidden1, relu), Dense(hidden2, relu), Dense(10), Xavier init;
and its input, the lab's ToTensor + Normalize(0.13, 0.31) of the images.

``build_net`` is the only place the architecture is written; training, the logged model and
every sweep trial get their network here. Input sizes are given up front so parameters are
created (and Xavier-initialised from MXNet's seeded generator) at once, not on the first batch.
"""

import mxnet as mx
import numpy as np
from mxnet import nd
from mxnet.gluon import nn

from legoexp.classes import IMAGE_SHAPE, NUM_CLASSES

INPUT_SIZE = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
MEAN, STD = 0.13, 0.31  # the lab's Normalize(0.13, 0.31)


def normalised(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, 48, 48[, 1]) -> float32 (N, 2304), as the lab's ToTensor + Normalize."""
    x = images.reshape(len(images), -1).astype(np.float32)
    return (x / np.float32(255.0) - np.float32(MEAN)) / np.float32(STD)


def normalise(images: np.ndarray) -> nd.NDArray:
    """``normalised`` as the NDArray the net takes."""
    return nd.array(normalised(images), dtype="float32")


def size(hidden1: int, hidden2: int) -> dict[str, int]:
    """What a net of these hidden sizes costs, from its architecture alone: ``param_count`` (weights and
    biases) and ``macs_per_image`` (the multiply-adds of one image's forward pass)."""
    layers = [(INPUT_SIZE, hidden1), (hidden1, hidden2), (hidden2, NUM_CLASSES)]
    return {"param_count": sum(n_in * n_out + n_out for n_in, n_out in layers),
            "macs_per_image": sum(n_in * n_out for n_in, n_out in layers)}


def build_net(hidden1: int = 128, hidden2: int = 64, seed: int | None = None) -> nn.HybridSequential:
    """Return the lab's MLP, initialised; ``seed`` seeds MXNet's generator first."""
    if seed is not None:
        mx.random.seed(seed)
    net = nn.HybridSequential()
    net.add(
        nn.Flatten(),
        nn.Dense(hidden1, activation="relu", in_units=INPUT_SIZE),
        nn.Dense(hidden2, activation="relu", in_units=hidden1),
        nn.Dense(NUM_CLASSES, in_units=hidden2),
    )
    net.initialize(mx.init.Xavier())
    return net
