"""Score an exported model on the eval split through its serving signature, and decide on deploying.

Scoring raw image bytes through the same signature the endpoint serves means the accuracy that
gates a deployment is the accuracy users get.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from components.lib.data.layout import discover_layout
from components.lib.serving.prediction import ServingModel

logger = logging.getLogger(__name__)


class ClassMismatchError(ValueError):
    """The model was trained on other classes than the data it is asked to score."""


@dataclass(frozen=True)
class Misclassified:
    """One eval image the model got wrong, for the report."""

    path: str
    true_class: str
    predicted_class: str
    confidence: float


@dataclass(frozen=True)
class Evaluation:
    class_names: list[str]
    confusion_matrix: list[list[int]]
    misclassified: tuple[Misclassified, ...] = ()

    @property
    def count(self) -> int:
        return int(np.sum(self.confusion_matrix))

    @property
    def accuracy(self) -> float:
        matrix = np.asarray(self.confusion_matrix)
        return float(np.trace(matrix) / matrix.sum()) if matrix.sum() else 0.0

    def _per_class(self, axis: int) -> dict[str, float]:
        matrix = np.asarray(self.confusion_matrix)
        totals = matrix.sum(axis=axis)
        return {
            name: float(matrix[i, i] / totals[i]) if totals[i] else 0.0
            for i, name in enumerate(self.class_names)
        }

    def precision(self) -> dict[str, float]:
        """Per class: the share of the images predicted as that class that truly are."""
        return self._per_class(axis=0)

    def recall(self) -> dict[str, float]:
        """Per class: the share of that class's images that were predicted as it."""
        return self._per_class(axis=1)

    def f1(self) -> dict[str, float]:
        """Per class: the harmonic mean of precision and recall (0 when both are 0)."""
        precision, recall = self.precision(), self.recall()
        return {
            name: 2 * precision[name] * recall[name] / (precision[name] + recall[name])
            if precision[name] + recall[name]
            else 0.0
            for name in self.class_names
        }

    @property
    def macro_f1(self) -> float:
        """F1 averaged over classes with equal weight, so a neglected small class shows."""
        return float(np.mean(list(self.f1().values())))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def evaluate_saved_model(
    model_dir: str,
    data_dir: str,
    split: str = "eval",
    batch_size: int = 32,
    role: str = "new model (challenger)",
) -> Evaluation:
    """Score the SavedModel in ``model_dir`` on ``data_dir/<split>`` (challenge layout); the log
    line names the model's ``role``."""
    model = ServingModel(model_dir)
    _, layout = discover_layout(data_dir)
    if layout.class_names != model.class_names:
        raise ClassMismatchError(
            f"the model was trained on classes {model.class_names} but the {split} data has "
            f"{layout.class_names}; evaluate on data with the same class folders"
        )
    labels, predictions, misclassified = [], [], []
    for index, name in enumerate(layout.class_names):
        paths = layout.files[split][name]
        for start in range(0, len(paths), batch_size):
            batch_paths = paths[start : start + batch_size]
            batch = []
            for path in batch_paths:
                with open(path, "rb") as file:
                    batch.append(file.read())
            predicted = model.predict(batch)
            for path, label, probabilities in zip(
                batch_paths, predicted.classes.tolist(), predicted.probabilities, strict=True
            ):
                if label != index:
                    misclassified.append(
                        Misclassified(
                            path, name, model.class_names[label], float(probabilities[label])
                        )
                    )
            predictions.extend(predicted.classes.tolist())
            labels.extend([index] * len(batch))
    matrix = confusion_matrix(np.asarray(labels), np.asarray(predictions), len(model.class_names))
    evaluation = Evaluation(
        class_names=model.class_names,
        confusion_matrix=matrix.tolist(),
        misclassified=tuple(misclassified),
    )
    logger.info(
        "%s: %s accuracy %.4f on %d images", role, split, evaluation.accuracy, evaluation.count
    )
    return evaluation


def evaluate_champion(model_dir: str | None, data_dir: str) -> Evaluation | None:
    """Score the served model on the same data as the challenger; None when nothing serves or
    the champion knows other classes (then it cannot be compared, and the challenger may replace
    it on its own merit)."""
    if model_dir is None:
        logger.info("no champion: nothing is served on the endpoint yet")
        return None
    try:
        return evaluate_saved_model(
            model_dir, data_dir, role=f"served model (champion, at {model_dir})"
        )
    except ClassMismatchError as error:
        logger.warning("champion not compared: %s", error)
        return None


def deployment_decision(
    accuracy: float,
    min_accuracy: float,
    champion_accuracy: float | None = None,
    max_regression: float = 0.0,
) -> tuple[bool, str]:
    """Deploy when the challenger passes the bar and is not worse than the champion by more than
    ``max_regression``; returns the decision and the reason in words for the log and metrics."""
    if accuracy < min_accuracy:
        return False, f"accuracy {accuracy:.4f} < required {min_accuracy:.4f}: not deployed"
    passed = f"accuracy {accuracy:.4f} >= required {min_accuracy:.4f}"
    if champion_accuracy is None:
        return True, f"{passed}, no champion serving: deploy"
    floor = champion_accuracy - max_regression
    versus = f"champion {champion_accuracy:.4f} - max regression {max_regression:.4f}"
    if accuracy < floor:
        return False, f"{passed} but < {versus}: not deployed, the champion keeps serving"
    return True, f"{passed} and >= {versus}: deploy"
