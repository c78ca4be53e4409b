"""Temperature scaling: probabilities that mean what they say.

Label smoothing trains the classifier to put only about 0.9 on its answer, so a right and
confident prediction shows 0.6 to 0.8. One temperature T, fitted on the validation split after
training by minimising the negative log-likelihood, rescales the model's log-probabilities
(``softmax(log p / T)``): the predicted class never changes, only how sure the model says it is.
The exported model applies it in its serving signature; ``calibration.json`` beside it records
T, so that evaluation can report the calibration error before and after.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

CALIBRATION_FILE = "calibration.json"
ECE_BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)


def scale(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / temperature)`` of each row; ``1 / T`` undoes a scaling by ``T``."""
    logits = np.log(np.maximum(np.asarray(probabilities, dtype=np.float64), 1e-300)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    exponentials = np.exp(logits)
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


def cross_entropy(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """Mean cross-entropy of predicted ``probabilities`` against ``targets`` (rows of weights)."""
    return float(-np.mean(np.sum(targets * np.log(np.maximum(probabilities, 1e-300)), axis=1)))


def laplace_targets(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The labels as soft targets by Laplace's rule of succession: 1 - 1/(n+2) on the true class,
    1/(n+2) shared by the others. n photos, all classified right, do not show that the model is
    never wrong: fitted to one-hot labels, the temperature of such a split goes to 0 and every
    answer, wrong ones too, reads 1.00; fitted to these it stays finite. With hundreds of photos
    the targets are all but one-hot."""
    share = 1 / (len(labels) + 2)
    targets = np.full((len(labels), num_classes), share / (num_classes - 1))
    targets[np.arange(len(labels)), np.asarray(labels)] = 1 - share
    return targets


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the cross-entropy of the scaled probabilities against the
    ``laplace_targets`` of ``labels`` (the negative log-likelihood, kept finite).

    The loss is convex in 1/T, so a golden-section search over ``TEMPERATURE_RANGE`` finds it;
    no labels gives 1 (no change).
    """
    if len(labels) == 0:
        return 1.0
    targets = laplace_targets(labels, np.asarray(probabilities).shape[1])
    low, high = (1 / TEMPERATURE_RANGE[1]), (1 / TEMPERATURE_RANGE[0])  # over 1/T
    ratio = (math.sqrt(5) - 1) / 2

    def loss(inverse: float) -> float:
        return cross_entropy(scale(probabilities, 1 / inverse), targets)

    for _ in range(80):
        left, right = high - ratio * (high - low), low + ratio * (high - low)
        if loss(left) <= loss(right):
            high = right
        else:
            low = left
    return float(1 / ((low + high) / 2))


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    """Expected calibration error: the gap between confidence (top probability) and accuracy,
    averaged over ``bins`` equal-width confidence bins weighted by how many predictions fall in
    each (Guo et al., 2017). 0 is perfectly calibrated."""
    probabilities = np.asarray(probabilities)
    if len(probabilities) == 0:
        return 0.0
    confidence = probabilities.max(axis=-1)
    correct = probabilities.argmax(axis=-1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    error = 0.0
    for index in range(bins):
        members = which == index
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def write_calibration(model_dir: str, temperature: float) -> None:
    with open(os.path.join(model_dir, CALIBRATION_FILE), "w") as file:
        json.dump({"temperature": temperature}, file, indent=2)


def read_temperature(model_dir: str) -> float | None:
    """The temperature an export applies; None for a model exported without calibration."""
    path = os.path.join(model_dir, CALIBRATION_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as file:
        return float(json.load(file)["temperature"])
