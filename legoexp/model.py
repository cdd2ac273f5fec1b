"""The lab's network: Flatten, Dense(hidden1, relu), Dense(hidden2, relu), Dense(10), Xavier init.

``build_net`` is the only place the architecture is written; training, the logged model and
every sweep trial get their network here. Input sizes are given up front so parameters are
created (and Xavier-initialised from MXNet's seeded generator) at once, not on the first batch.
"""

import mxnet as mx
from mxnet.gluon import nn

from legoexp.classes import IMAGE_SHAPE, NUM_CLASSES

INPUT_SIZE = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]


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
