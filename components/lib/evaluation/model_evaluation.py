"""An evaluation as a model registry keeps it (Vertex AI's ``ModelEvaluation``), and back.

The metrics follow Vertex AI's classification metrics schema, which the console's Evaluate tab
renders: ``auPrc``, ``auRoc`` and ``logLoss`` (micro-averaged over every photo and class),
precision and recall at confidence thresholds (``confidenceMetrics``; at threshold 0 the
``precisionAt1`` and ``recallAt1`` of a single-label model are its accuracy, which the schema
has no field of its own for), and the confusion matrix with the class names. Each class gets a
slice (dimension ``annotationSpec``, the class name) with the same metrics of that class against
the rest, so its ``precisionAt1``/``recallAt1`` at threshold 0 are the class's precision and
recall.

Beside the metrics go the per-photo results (``predictions.jsonl``: photo, true class, the
probabilities served) and the fingerprint of the eval photos: a later run scored on the same
photos reads the champion's results back from there instead of scoring it again
(``champion_from_registry``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from components.lib.evaluation.metrics import (
    COMPARED,
    Champion,
    Evaluation,
    confusion_matrix,
    eval_photos,
    evaluate_champion,
    relative_photo,
)
from components.lib.evaluation.stored import ROWS_FILE, write_record
from components.lib.storage import gcs_uri, local_copy

logger = logging.getLogger(__name__)

CLASSIFICATION_METRICS_SCHEMA = (
    "gs://google-cloud-aiplatform/schema/modelevaluation/classification_metrics_1.0.0.yaml"
)
CLASS_SLICE = "annotationSpec"
"""The slice dimension of one class (the value is the class's display name)."""
THRESHOLDS = (*(round(0.05 * step, 2) for step in range(20)), 0.96, 0.97, 0.98, 0.99)
"""The confidence thresholds Vertex AI's own classification evaluations report."""


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def confidence_metrics(
    scores: np.ndarray, truth: np.ndarray, top: np.ndarray
) -> list[dict[str, Any]]:
    """``confidenceMetrics`` of (photo, class) pairs: each pair's served probability, whether
    the class is the photo's true one, and whether it is the photo's top class.

    At a threshold every pair scored at or above it counts as predicted; the ``At1`` figures
    count only top classes. Counts are strings, as the schema's int64 fields are in JSON.
    """
    entries = []
    for threshold in THRESHOLDS:
        predicted = scores >= threshold
        first = predicted & top
        true_positive = int(np.sum(predicted & truth))
        false_positive = int(np.sum(predicted & ~truth))
        false_negative = int(np.sum(~predicted & truth))
        true_negative = int(np.sum(~predicted & ~truth))
        hits_at_1 = int(np.sum(first & truth))
        misses_at_1 = int(np.sum(first & ~truth))
        precision = _ratio(true_positive, true_positive + false_positive)
        recall = _ratio(true_positive, true_positive + false_negative)
        precision_at_1 = _ratio(hits_at_1, hits_at_1 + misses_at_1)
        recall_at_1 = _ratio(hits_at_1, int(np.sum(truth)))
        entries.append(
            {
                "confidenceThreshold": threshold,
                "precision": precision,
                "recall": recall,
                "f1Score": _f1(precision, recall),
                "falsePositiveRate": _ratio(false_positive, false_positive + true_negative),
                "precisionAt1": precision_at_1,
                "recallAt1": recall_at_1,
                "f1ScoreAt1": _f1(precision_at_1, recall_at_1),
                "falsePositiveRateAt1": _ratio(misses_at_1, int(np.sum(~truth))),
                "truePositiveCount": str(true_positive),
                "falsePositiveCount": str(false_positive),
                "falseNegativeCount": str(false_negative),
                "trueNegativeCount": str(true_negative),
            }
        )
    return entries


def area_under_pr(scores: np.ndarray, truth: np.ndarray) -> float:
    """Average precision: the precision at each true pair, ranked by score, averaged."""
    positives = int(np.sum(truth))
    if not positives:
        return 0.0
    ranked = truth[np.argsort(-scores, kind="stable")]
    hits = np.cumsum(ranked)
    return float(np.sum((hits / np.arange(1, len(ranked) + 1))[ranked]) / positives)


def area_under_roc(scores: np.ndarray, truth: np.ndarray) -> float:
    """The chance that a true pair outscores a false one (ties count half)."""
    positives, negatives = int(np.sum(truth)), int(np.sum(~truth))
    if not positives or not negatives:
        return 0.0
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks over ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    return float((np.sum(ranks[truth]) - positives * (positives + 1) / 2) / (positives * negatives))


def _pairs(evaluation: Evaluation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Served probabilities, true-class and top-class masks, one row per photo."""
    probabilities = np.asarray(evaluation.probabilities, dtype=np.float64)
    classes = len(evaluation.class_names)
    truth = np.eye(classes, dtype=bool)[np.asarray(evaluation.labels)]
    top = np.eye(classes, dtype=bool)[probabilities.argmax(axis=-1)]
    return probabilities, truth, top


def _metrics(scores: np.ndarray, truth: np.ndarray, top: np.ndarray) -> dict[str, Any]:
    return {
        "auPrc": area_under_pr(scores, truth),
        "auRoc": area_under_roc(scores, truth),
        "confidenceMetrics": confidence_metrics(scores, truth, top),
    }


def classification_metrics(evaluation: Evaluation) -> dict[str, Any]:
    """The whole evaluation in the classification metrics schema (needs the photos' served
    probabilities: an evaluation scored photo by photo)."""
    probabilities, truth, top = _pairs(evaluation)
    served = np.clip(probabilities[truth], 1e-15, 1.0)
    return {
        **_metrics(probabilities.ravel(), truth.ravel(), top.ravel()),
        "logLoss": float(-np.mean(np.log(served))),
        "confusionMatrix": {
            "annotationSpecs": [
                {"id": str(index), "displayName": name}
                for index, name in enumerate(evaluation.class_names)
            ],
            "rows": evaluation.confusion_matrix,
        },
    }


def class_slices(evaluation: Evaluation) -> list[dict[str, Any]]:
    """One ``ModelEvaluationSlice`` per class: that class against the rest."""
    probabilities, truth, top = _pairs(evaluation)
    return [
        {
            "dimension": CLASS_SLICE,
            "value": name,
            "metrics": _metrics(probabilities[:, index], truth[:, index], top[:, index]),
        }
        for index, name in enumerate(evaluation.class_names)
    ]


def write_model_evaluation(
    evaluation: Evaluation, data_dir: str, directory: str, uri: str, dataset_uri: str = ""
) -> dict[str, Any]:
    """Write ``evaluation`` into ``directory`` (an artifact known elsewhere by ``uri``) as the
    registry will keep it: ``evaluation.json`` (the fields of the target's
    ``ModelEvaluationRecord``) and the per-photo results it points to; returns the record."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, ROWS_FILE), "w") as file:
        for photo, label, probabilities in zip(
            evaluation.photos, evaluation.labels, evaluation.probabilities, strict=True
        ):
            row = {
                "photo": relative_photo(photo, data_dir),
                "label": int(label),
                "probabilities": [float(p) for p in probabilities],
            }
            file.write(json.dumps(row) + "\n")
    metadata = {
        "accuracy": evaluation.accuracy,
        "eval_images": evaluation.count,
        "class_names": list(evaluation.class_names),
    }
    if evaluation.temperature is not None:
        metadata["temperature"] = evaluation.temperature
    if dataset_uri:
        metadata["evaluation_dataset_path"] = [dataset_uri]
    record = {
        "display_name": f"accuracy {evaluation.accuracy:.4f} on {evaluation.count} eval photos",
        "metrics_schema_uri": CLASSIFICATION_METRICS_SCHEMA,
        "metrics": classification_metrics(evaluation),
        "slices": class_slices(evaluation),
        "fingerprint": evaluation.fingerprint,
        "rows_uri": f"{gcs_uri(uri).rstrip('/')}/{ROWS_FILE}",
        "metadata": metadata,
    }
    write_record(directory, record)
    return record


def evaluation_from_rows(rows_uri: str, data_dir: str, fingerprint: str) -> Evaluation:
    """The evaluation whose per-photo results are at ``rows_uri``, on the photos of
    ``data_dir`` (which must be the ones it was scored on); ValueError when they are not."""
    with open(local_copy(rows_uri)) as file:
        rows = {row["photo"]: row for row in map(json.loads, filter(str.strip, file))}
    class_names, photos = eval_photos(data_dir)
    matched = [rows.get(relative_photo(path, data_dir)) for path, _ in photos]
    if len(rows) != len(photos) or any(
        row is None or row["label"] != label
        for row, (_, label) in zip(matched, photos, strict=True)
    ):
        raise ValueError(f"the results at {rows_uri} are not of the photos in {data_dir}")
    labels = np.asarray([label for _, label in photos], dtype=np.int64)
    probabilities = np.asarray([row["probabilities"] for row in matched], dtype=np.float64)
    predicted = probabilities.argmax(axis=-1)
    return Evaluation(
        class_names=class_names,
        confusion_matrix=confusion_matrix(labels, predicted, len(class_names)).tolist(),
        photos=tuple(path for path, _ in photos),
        labels=tuple(labels.tolist()),
        probabilities=probabilities,
        fingerprint=fingerprint,
    )


def _short(fingerprint: str) -> str:
    return fingerprint[: len("sha256:") + 12]


def champion_from_registry(
    recorded: Mapping[str, str], model_dir: str | None, data_dir: str, challenger: Evaluation
) -> Champion:
    """The served model's scores on the challenger's photos: read from the registry's evaluation
    of the same photos (``recorded``: fingerprint -> per-photo results' URI) when it has one,
    otherwise scored here from ``model_dir``; ``Champion.how`` says which, and why."""
    if model_dir is None:
        return evaluate_champion(None, data_dir)
    fingerprint = challenger.fingerprint
    if fingerprint in recorded:
        try:
            evaluation = evaluation_from_rows(recorded[fingerprint], data_dir, fingerprint)
        except (OSError, ValueError, KeyError) as error:
            how = f"re-scored: its registry evaluation's results could not be used ({error})"
        else:
            how = (
                "read from its evaluation in the model registry (same eval photos, "
                f"{_short(fingerprint)})"
            )
            logger.info("served model (champion): %s", how)
            return Champion(COMPARED, evaluation, how=how)
    elif recorded:
        others = ", ".join(_short(other) for other in recorded)
        how = (
            f"re-scored: its registry evaluation is of other eval photos ({others}, now "
            f"{_short(fingerprint)})"
        )
    else:
        how = "scored: it has no evaluation in the model registry"
    logger.info("served model (champion): %s", how)
    champion = evaluate_champion(model_dir, data_dir)
    return dataclasses.replace(champion, how=how) if champion.status == COMPARED else champion
