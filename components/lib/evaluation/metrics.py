"""Score an exported model on the eval split through its serving signature, and decide on deploying.

Scoring raw image bytes through the same signature the endpoint serves means the accuracy that
gates a deployment is the accuracy users get. The served model (the champion) is scored on the
same photos, and the two are compared photo by photo (``PairedComparison``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np

from components.lib.data.layout import discover_layout
from components.lib.evaluation.rule import GateRule
from components.lib.evaluation.statistics import SIGNIFICANCE, mcnemar_exact, wilson_interval
from components.lib.modelling.calibration import (
    expected_calibration_error,
    read_calibration_decision,
    read_temperature,
    scale,
)
from components.lib.serving.prediction import ServingModel

logger = logging.getLogger(__name__)


class ClassMismatchError(ValueError):
    """The model was trained on other classes than the data it is asked to score."""

    def __init__(self, model_classes: list[str], data_classes: list[str], split: str) -> None:
        super().__init__(
            f"the model was trained on classes {model_classes} but the {split} data has "
            f"{data_classes}; evaluate on data with the same classes"
        )
        self.model_classes = model_classes
        self.data_classes = data_classes


@dataclass(frozen=True)
class Misclassified:
    """One eval image the model got wrong, for the report."""

    path: str
    true_class: str
    predicted_class: str
    confidence: float


@dataclass(frozen=True)
class Evaluation:
    """A model's scores on one eval split; with each photo's path, true class index and served
    probabilities (``photos``, ``labels``, ``probabilities``) when it was scored photo by photo,
    the calibration ``temperature`` its export applies (None: not calibrated) and why
    (``calibration_decision``: applied, or 1 kept), and the ``fingerprint`` of the eval photos it
    was scored on (``eval_fingerprint``)."""

    class_names: list[str]
    confusion_matrix: list[list[int]]
    misclassified: tuple[Misclassified, ...] = ()
    photos: tuple[str, ...] = ()
    labels: tuple[int, ...] = ()
    probabilities: np.ndarray | None = field(default=None, compare=False, repr=False)
    temperature: float | None = None
    fingerprint: str = ""
    calibration_decision: str = ""

    @property
    def count(self) -> int:
        return int(np.sum(self.confusion_matrix))

    @property
    def correct(self) -> int:
        return int(np.trace(np.asarray(self.confusion_matrix)))

    @property
    def accuracy(self) -> float:
        return self.correct / self.count if self.count else 0.0

    @property
    def accuracy_interval(self) -> tuple[float, float]:
        """The 95% Wilson interval of the accuracy."""
        return wilson_interval(self.correct, self.count)

    def right_by_photo(self) -> dict[str, bool]:
        """Photo path -> whether the model classified it right."""
        predicted = np.asarray(self.probabilities).argmax(axis=-1)
        return {
            photo: bool(guess == label)
            for photo, guess, label in zip(self.photos, predicted, self.labels, strict=True)
        }

    def calibration_error(self) -> float | None:
        """ECE (15 bins) of the probabilities the model serves; None when not scored by photo."""
        if self.probabilities is None:
            return None
        return expected_calibration_error(self.probabilities, np.asarray(self.labels))

    def uncalibrated_error(self) -> float | None:
        """ECE the same model had before its temperature scaling; None when it has none."""
        if self.probabilities is None or self.temperature is None:
            return None
        raw = scale(self.probabilities, 1 / self.temperature)
        return expected_calibration_error(raw, np.asarray(self.labels))

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


def eval_fingerprint(digests: list[tuple[str, str]]) -> str:
    """``sha256:`` of the eval photos, from each one's path relative to the data (which names
    its class) and the sha256 of its content. Two evaluations with the same fingerprint scored
    the same photos with the same labels, so one can stand for the other."""
    lines = sorted(f"{path}\t{digest}" for path, digest in digests)
    return "sha256:" + hashlib.sha256("\n".join(lines).encode()).hexdigest()


def eval_photos(data_dir: str, split: str = "eval") -> tuple[list[str], list[tuple[str, int]]]:
    """The class names of the data and its ``split``'s photos in scoring order, as (path,
    class index); the one listing that scoring and a registry record are matched on."""
    _, layout = discover_layout(data_dir)
    photos = [
        (path, index)
        for index, name in enumerate(layout.class_names)
        for path in layout.files[split][name]
    ]
    return layout.class_names, photos


def relative_photo(path: str, data_dir: str) -> str:
    """A photo's path relative to the data folder, e.g. ``eval/<class>/<file>``."""
    return os.path.relpath(path, data_dir)


def scored(
    class_names: list[str],
    listed: list[tuple[str, int]],
    probabilities: np.ndarray,
    **details: object,
) -> Evaluation:
    """The ``Evaluation`` of a model that gave ``probabilities`` (one row per photo of
    ``listed``, as ``eval_photos`` lists them); its class is the most probable one. ``details``:
    the other fields of ``Evaluation`` (temperature, fingerprint)."""
    labels = np.asarray([index for _, index in listed], dtype=np.int64)
    predictions = np.asarray(probabilities).argmax(axis=-1)
    misclassified = tuple(
        Misclassified(path, class_names[index], class_names[guess], float(row[guess]))
        for (path, index), guess, row in zip(listed, predictions, probabilities, strict=True)
        if guess != index
    )
    matrix = confusion_matrix(labels, predictions, len(class_names))
    return Evaluation(
        class_names=list(class_names),
        confusion_matrix=matrix.tolist(),
        misclassified=misclassified,
        photos=tuple(path for path, _ in listed),
        labels=tuple(labels.tolist()),
        probabilities=probabilities,
        **details,
    )


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
    class_names, listed = eval_photos(data_dir, split)
    if class_names != model.class_names:
        raise ClassMismatchError(model.class_names, class_names, split)
    served, digests = [], []
    for start in range(0, len(listed), batch_size):
        batch = []
        for path, _ in listed[start : start + batch_size]:
            with open(path, "rb") as file:
                batch.append(file.read())
            digests.append((relative_photo(path, data_dir), hashlib.sha256(batch[-1]).hexdigest()))
        served.extend(model.predict(batch).probabilities)
    evaluation = scored(
        class_names,
        listed,
        np.asarray(served, dtype=np.float64),
        temperature=read_temperature(model.model_dir),
        calibration_decision=read_calibration_decision(model.model_dir),
        fingerprint=eval_fingerprint(digests),
    )
    logger.info(
        "%s: %s accuracy %.4f on %d images", role, split, evaluation.accuracy, evaluation.count
    )
    return evaluation


NO_CHAMPION, COMPARED, NOT_COMPARABLE = "none", "compared", "not_comparable"


@dataclass(frozen=True)
class Champion:
    """What the endpoint serves now, as evaluate found it: nothing (``NO_CHAMPION``), a model
    scored on the same photos (``COMPARED``), or a model that cannot be scored on them
    (``NOT_COMPARABLE``: other classes), with the reason in words; ``how`` says where a compared
    champion's scores come from (scored here, or read from its evaluation in the registry)."""

    status: str
    evaluation: Evaluation | None = None
    reason: str = ""
    how: str = ""

    @property
    def accuracy(self) -> float | None:
        return self.evaluation.accuracy if self.evaluation else None

    def describe(self) -> str:
        """One line for the run summary, the metrics and the report."""
        if self.status == NO_CHAMPION:
            return "none served"
        if self.status == NOT_COMPARABLE:
            return f"a model serves but could not be compared: {self.reason}"
        evaluation = self.evaluation
        how = f", {self.how}" if self.how else ""
        return (
            f"{evaluation.accuracy:.4f} ({evaluation.correct} of {evaluation.count}), the served "
            f"model on the same photos{how}"
        )


def evaluate_champion(model_dir: str | None, data_dir: str) -> Champion:
    """Score the served model on the same data as the challenger; not comparable when it knows
    other classes (the reason names them: the gate then keeps it unless told otherwise)."""
    if model_dir is None:
        logger.info("no champion: nothing is served on the endpoint yet")
        return Champion(NO_CHAMPION)
    try:
        champion = evaluate_saved_model(
            model_dir, data_dir, role=f"served model (champion, at {model_dir})"
        )
    except ClassMismatchError as error:
        reason = (
            f"it was trained on {len(error.model_classes)} classes {error.model_classes}, this "
            f"model on {len(error.data_classes)} {error.data_classes}"
        )
        logger.warning("champion not compared: %s", reason)
        return Champion(NOT_COMPARABLE, reason=reason)
    return Champion(COMPARED, champion)


@dataclass(frozen=True)
class PairedComparison:
    """The challenger against the champion on the same photos: how many only the challenger
    gets right, how many only the champion, and the exact McNemar test on those."""

    photos: int
    challenger_only: int
    champion_only: int

    @property
    def p_value(self) -> float:
        return mcnemar_exact(self.challenger_only, self.champion_only)

    @property
    def significant(self) -> bool:
        return self.p_value < SIGNIFICANCE

    @property
    def difference(self) -> int:
        """Photos the challenger gets right minus photos the champion gets right."""
        return self.challenger_only - self.champion_only

    def describe(self) -> str:
        if not self.significant:
            finding = "not significantly different"
        else:
            finding = f"significantly {'better' if self.difference > 0 else 'worse'}"
        return (
            f"on the same {self.photos} photos {self.challenger_only} are right only by this "
            f"model and {self.champion_only} only by the champion: exact McNemar p = "
            f"{self.p_value:.3f}, {finding} (at {SIGNIFICANCE})"
        )

    def to_dict(self) -> dict:
        return {
            "test": "exact McNemar (two-sided)",
            "photos": self.photos,
            "challenger_only": self.challenger_only,
            "champion_only": self.champion_only,
            "p_value": round(self.p_value, 4),
            "significant": self.significant,
        }


def compare_paired(challenger: Evaluation, champion: Evaluation) -> PairedComparison:
    """Compare two models photo by photo; both must have been scored on the same photos."""
    mine, theirs = challenger.right_by_photo(), champion.right_by_photo()
    if mine.keys() != theirs.keys():
        raise ValueError("the challenger and the champion were not scored on the same photos")
    return PairedComparison(
        photos=len(mine),
        challenger_only=sum(mine[p] and not theirs[p] for p in mine),
        champion_only=sum(theirs[p] and not mine[p] for p in mine),
    )


@dataclass(frozen=True)
class Decision:
    deploy: bool
    reason: str
    comparison: PairedComparison | None = None


def deployment_decision(challenger: Evaluation, champion: Champion, rule: GateRule) -> Decision:
    """Deploy when the challenger reaches ``min_accuracy`` and either nothing is served, or the
    served model has the same classes and the challenger is not worse on the same photos by more
    than ``max_regression`` of them, or it has other classes and ``allow_class_change`` is set.

    The comparison counts photos (no rounding), and the reason says what the paired test found:
    with a hundred photos a difference of one or two is chance, and the reason says so.
    """
    accuracy = challenger.accuracy
    if accuracy < rule.min_accuracy:
        return Decision(
            False, f"accuracy {accuracy:.4f} < required {rule.min_accuracy:.4f}: not deployed"
        )
    passed = f"accuracy {accuracy:.4f} >= required {rule.min_accuracy:.4f}"
    if champion.status == NO_CHAMPION:
        return Decision(True, f"{passed}, no champion serving: deploy")
    if champion.status == NOT_COMPARABLE:
        served = f"a champion serves but could not be compared ({champion.reason})"
        if rule.allow_class_change:
            return Decision(True, f"{passed}; {served}; allow_class_change is set: deploy")
        return Decision(
            False,
            f"{passed}; {served}; replacing it needs allow_class_change=true: not deployed, "
            "the champion keeps serving",
        )
    comparison = compare_paired(challenger, champion.evaluation)
    allowed = math.floor(rule.max_regression * comparison.photos + 1e-9)
    how = f" ({champion.how})" if champion.how else ""
    versus = (
        f"champion {champion.accuracy:.4f}{how}: {comparison.describe()}; max regression "
        f"{rule.max_regression:.4f} allows {allowed} photo(s) fewer"
    )
    if comparison.difference >= -allowed:
        return Decision(True, f"{passed}; vs {versus}: deploy", comparison)
    return Decision(
        False,
        f"{passed} but vs {versus}, it has {-comparison.difference}: not deployed, the champion "
        "keeps serving",
        comparison,
    )
