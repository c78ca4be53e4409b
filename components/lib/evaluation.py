"""Score an exported model on the eval split through its serving signature, and decide on deploying.

Scoring raw image bytes through the same signature the endpoint serves means the accuracy that
gates a deployment is the accuracy users get.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from components.lib.layout import discover_layout
from components.lib.prediction import ServingModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    class_names: list[str]
    confusion_matrix: list[list[int]]

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


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def evaluate_saved_model(
    model_dir: str, data_dir: str, split: str = "eval", batch_size: int = 32
) -> Evaluation:
    """Score the SavedModel in ``model_dir`` on ``data_dir/<split>`` (challenge layout)."""
    model = ServingModel(model_dir)
    _, layout = discover_layout(data_dir)
    if layout.class_names != model.class_names:
        raise ValueError(
            f"the model was trained on classes {model.class_names} but the {split} data has "
            f"{layout.class_names}; evaluate on data with the same class folders"
        )
    labels, predictions = [], []
    for index, name in enumerate(layout.class_names):
        paths = layout.files[split][name]
        for start in range(0, len(paths), batch_size):
            batch = []
            for path in paths[start : start + batch_size]:
                with open(path, "rb") as file:
                    batch.append(file.read())
            predictions.extend(model.predict(batch).classes.tolist())
            labels.extend([index] * len(batch))
    matrix = confusion_matrix(np.asarray(labels), np.asarray(predictions), len(model.class_names))
    evaluation = Evaluation(class_names=model.class_names, confusion_matrix=matrix.tolist())
    logger.info("%s accuracy %.4f on %d images", split, evaluation.accuracy, evaluation.count)
    return evaluation


def deployment_decision(accuracy: float, min_accuracy: float) -> tuple[bool, str]:
    """Whether to deploy, and the reason in words for the run's log and metrics."""
    if accuracy >= min_accuracy:
        return True, f"accuracy {accuracy:.4f} >= required {min_accuracy:.4f}: deploy"
    return False, f"accuracy {accuracy:.4f} < required {min_accuracy:.4f}: not deployed"
