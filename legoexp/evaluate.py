"""Scoring a trained network: softmax probabilities, loss and accuracy on a labelled split.

Used for the test set of the baseline and the comparisons, for each fold's validation set in
the sweep, and by the logged model to answer predictions; nothing here knows about MLflow.
"""

from dataclasses import dataclass

import numpy as np

from legoexp.classes import NUM_CLASSES
from legoexp.model import normalise

_CHUNK = 4096  # images per forward pass: bounds memory for large inputs


def predict_proba(net, images: np.ndarray) -> np.ndarray:
    """Softmax probabilities (N, 10) for uint8 images (N, 48, 48[, 1])."""
    logits = [net(normalise(images[i:i + _CHUNK])).asnumpy() for i in range(0, len(images), _CHUNK)]
    if not logits:
        return np.zeros((0, NUM_CLASSES), np.float32)
    z = np.concatenate(logits).astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


@dataclass
class Evaluation:
    loss: float  # mean softmax cross-entropy
    accuracy: float
    probabilities: np.ndarray  # (N, 10)


def evaluate(net, images: np.ndarray, labels: np.ndarray) -> Evaluation:
    """Loss, accuracy and per-image probabilities of ``net`` on (images, labels)."""
    probs = predict_proba(net, images)
    picked = probs[np.arange(len(labels)), labels]
    loss = float(-np.log(np.maximum(picked, np.finfo(np.float64).tiny)).mean())
    predicted = probs.argmax(axis=1)
    return Evaluation(loss, float((predicted == labels).mean()), probs)
