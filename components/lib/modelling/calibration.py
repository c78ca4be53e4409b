"""Temperature scaling: probabilities that mean what they say.

Label smoothing trains the classifier to put only about 0.9 on its answer, so a right and
confident prediction shows 0.6 to 0.8. One temperature T, fitted on the validation split after
training by minimising the negative log-likelihood, rescales the model's log-probabilities
(``softmax(log p / T)``): the predicted class never changes, only how sure the model says it is.
The exported model applies it in its serving signature; ``calibration.json`` beside it records
T, so that evaluation can report the calibration error before and after.

A temperature fitted on a handful of validation images can make the probabilities worse on new
ones (ECE 0.068 -> 0.102 was seen with 8). So ``choose_temperature`` first cross-fits: each
fold of the validation images is scaled by a temperature fitted on the other folds, and the
temperature is applied only when that lowers the ECE of images it was not fitted on; otherwise
T = 1 is kept, and the choice says why.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

CALIBRATION_FILE = "calibration.json"
ECE_BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)
CROSS_FIT_FOLDS = 5


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


@dataclass(frozen=True)
class TemperatureChoice:
    """Whether a fitted temperature is applied, and the held-out evidence: the ECE of the
    validation images uncalibrated, and each fold scaled by the temperature fitted on the
    other ``folds`` (``held_out_ece_after``); ``temperature`` is the one applied (1: kept)."""

    temperature: float
    fitted_temperature: float
    images: int
    folds: int
    held_out_ece_before: float
    held_out_ece_after: float

    @property
    def applied(self) -> bool:
        return self.temperature != 1.0

    def describe(self) -> str:
        """The choice in one sentence, for the run summary and the report."""
        if self.folds < 2:
            return (
                f"temperature 1 kept: {self.images} validation image(s) are too few to test a "
                "fitted temperature on images it was not fitted on"
            )
        held_out = (
            f"on validation images it was not fitted on ({self.folds}-fold cross-fitting over "
            f"{self.images}) ECE {self.held_out_ece_before:.4f} -> {self.held_out_ece_after:.4f}"
        )
        if self.applied:
            return f"temperature {self.temperature:.3f} applied: {held_out}"
        return (
            f"temperature 1 kept (fitted {self.fitted_temperature:.3f} not applied): {held_out}, "
            "no lower"
        )

    def to_dict(self) -> dict[str, float | int | str]:
        return {**asdict(self), "decision": self.describe()}


def choose_temperature(
    probabilities: np.ndarray, labels: np.ndarray, folds: int = CROSS_FIT_FOLDS
) -> TemperatureChoice:
    """The temperature fitted on all ``labels`` if it lowers the ECE of images it was not fitted
    on, else 1: the images are dealt into ``folds`` folds in turn (record order mixes the
    classes), each fold is scaled by the temperature fitted on the others, and the ECE of those
    held-out probabilities is compared with the uncalibrated ECE of the same images."""
    probabilities, labels = np.asarray(probabilities), np.asarray(labels)
    count = len(labels)
    folds = min(folds, count)
    fitted = fit_temperature(probabilities, labels)
    before = expected_calibration_error(probabilities, labels)
    if folds < 2:
        return TemperatureChoice(1.0, fitted, count, folds, before, before)
    fold = np.arange(count) % folds
    held_out = np.empty_like(probabilities, dtype=np.float64)
    for index in range(folds):
        inside = fold != index
        temperature = fit_temperature(probabilities[inside], labels[inside])
        held_out[~inside] = scale(probabilities[~inside], temperature)
    after = expected_calibration_error(held_out, labels)
    return TemperatureChoice(fitted if after < before else 1.0, fitted, count, folds, before, after)


def write_calibration(
    model_dir: str, temperature: float, figures: Mapping[str, object] | None = None
) -> None:
    """``calibration.json``: the temperature the export applies and, when known, the
    ``figures`` of how it was chosen (``TemperatureChoice.to_dict``, ECE on validation)."""
    with open(os.path.join(model_dir, CALIBRATION_FILE), "w") as file:
        json.dump({**(figures or {}), "temperature": temperature}, file, indent=2)


def _read_calibration(model_dir: str) -> dict:
    path = os.path.join(model_dir, CALIBRATION_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as file:
        return json.load(file)


def read_temperature(model_dir: str) -> float | None:
    """The temperature an export applies; None for a model exported without calibration."""
    recorded = _read_calibration(model_dir)
    return float(recorded["temperature"]) if recorded else None


def read_calibration_decision(model_dir: str) -> str:
    """Why the export applies its temperature or keeps 1 (``TemperatureChoice.describe``);
    empty for an export that does not record it."""
    return str(_read_calibration(model_dir).get("decision", ""))
