"""Metrics from the confusion matrix, the accuracy interval, the paired test, calibration, and
the deploy decision without a champion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from components.lib.evaluation.metrics import (
    NO_CHAMPION,
    Champion,
    ClassMismatchError,
    Evaluation,
    GateRule,
    confusion_matrix,
    deployment_decision,
    evaluate_saved_model,
)
from components.lib.evaluation.statistics import mcnemar_exact, wilson_interval
from components.lib.modelling.calibration import (
    choose_temperature,
    expected_calibration_error,
    fit_temperature,
    scale,
)
from tests.conftest import make_layout, scored


def test_confusion_matrix_rows_are_true_classes() -> None:
    matrix = confusion_matrix(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0]), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


def test_accuracy_precision_recall() -> None:
    evaluation = Evaluation(["a", "b"], [[3, 1], [2, 4]])
    assert evaluation.count == 10
    assert evaluation.accuracy == pytest.approx(0.7)
    assert evaluation.precision() == pytest.approx({"a": 3 / 5, "b": 4 / 5})
    assert evaluation.recall() == pytest.approx({"a": 3 / 4, "b": 4 / 6})


def test_class_never_predicted_has_zero_precision() -> None:
    assert Evaluation(["a", "b"], [[2, 0], [1, 0]]).precision() == {"a": 2 / 3, "b": 0.0}


def test_f1_per_class_and_macro() -> None:
    evaluation = Evaluation(["a", "b", "c"], [[3, 1, 0], [2, 4, 0], [0, 0, 0]])
    f1 = evaluation.f1()
    assert f1["a"] == pytest.approx(2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4))
    assert f1["b"] == pytest.approx(2 * (4 / 5) * (4 / 6) / (4 / 5 + 4 / 6))
    assert f1["c"] == 0.0
    assert evaluation.macro_f1 == pytest.approx((f1["a"] + f1["b"]) / 3)


@pytest.mark.parametrize(
    ("right", "required", "deploy", "words"),
    [
        (85, 0.80, True, "accuracy 0.8500 >= required 0.8000, no champion serving: deploy"),
        (80, 0.80, True, ">= required"),
        (79, 0.80, False, "accuracy 0.7900 < required 0.8000: not deployed"),
    ],
)
def test_deployment_decision_without_champion(
    right: int, required: float, deploy: bool, words: str
) -> None:
    evaluation = scored([True] * right + [False] * (100 - right))
    decision = deployment_decision(evaluation, Champion(NO_CHAMPION), GateRule(required))
    assert decision.deploy is deploy
    assert words in decision.reason


def test_wilson_interval_matches_published_values() -> None:
    """Newcombe (1998), table I: 0/10 and 5/10; an accuracy near 1 stays below 1."""
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    low, high = wilson_interval(96, 97)
    assert 0.94 < low < 96 / 97 < high < 1.0
    assert scored([True] * 96 + [False]).accuracy_interval == (low, high)


@pytest.mark.parametrize(
    ("only_first", "only_second", "p_value"),
    [(1, 0, 1.0), (0, 0, 1.0), (0, 5, 0.0625), (6, 0, 0.03125), (10, 1, 24 / 2048)],
)
def test_exact_mcnemar_p_values(only_first: int, only_second: int, p_value: float) -> None:
    assert mcnemar_exact(only_first, only_second) == pytest.approx(p_value)
    assert mcnemar_exact(only_second, only_first) == pytest.approx(p_value)


def test_expected_calibration_error_by_hand() -> None:
    # Two bins used: confidence 0.95 (2 right of 2) and 0.55 (1 right of 2).
    probabilities = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.45, 0.55]])
    labels = np.array([0, 0, 0, 0])
    expected = 0.5 * abs(1.0 - 0.95) + 0.5 * abs(0.5 - 0.55)
    assert expected_calibration_error(probabilities, labels) == pytest.approx(expected)


def test_temperature_fitted_to_overconfident_probabilities_recovers_it() -> None:
    """Labels drawn from softmax(z); a model that says softmax(2z) is fitted T close to 2, and
    its calibration error drops; the predicted classes never change."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (20000, 4))
    truth = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(4, p=row) for row in truth])
    overconfident = scale(truth, 0.5)

    temperature = fit_temperature(overconfident, labels)

    assert temperature == pytest.approx(2.0, rel=0.05)
    calibrated = scale(overconfident, temperature)
    assert (calibrated.argmax(axis=1) == overconfident.argmax(axis=1)).all()
    before = expected_calibration_error(overconfident, labels)
    assert expected_calibration_error(calibrated, labels) < before / 4


# Eight validation photos of four classes, seven right, at the moderate confidences label
# smoothing gives (0.48 to 0.88): the fitted temperature sharpens them (T about 0.69), which
# raises the ECE of these very photos (0.206 -> 0.226) and of held-out ones (-> 0.249).
SMALL_SPLIT_CONFIDENCE = [0.78, 0.6, 0.75, 0.5, 0.74, 0.62, 0.88, 0.48]
SMALL_SPLIT_RIGHT = [True] * 7 + [False]


def small_split() -> tuple[np.ndarray, np.ndarray]:
    labels = np.arange(8) % 4
    probabilities = np.zeros((8, 4))
    for row, (confidence, right) in enumerate(
        zip(SMALL_SPLIT_CONFIDENCE, SMALL_SPLIT_RIGHT, strict=True)
    ):
        probabilities[row] = (1 - confidence) / 3
        probabilities[row, labels[row] if right else (labels[row] + 1) % 4] = confidence
    return probabilities, labels


def test_a_temperature_that_raises_held_out_ece_is_not_applied() -> None:
    probabilities, labels = small_split()

    choice = choose_temperature(probabilities, labels)

    assert choice.fitted_temperature == pytest.approx(0.69, abs=0.01)
    assert choice.held_out_ece_before == pytest.approx(0.20625)
    assert choice.held_out_ece_after == pytest.approx(0.2491, abs=1e-4)
    assert choice.temperature == 1.0 and not choice.applied
    assert choice.describe() == (
        "temperature 1 kept (fitted 0.690 not applied): on validation images it was not fitted "
        "on (5-fold cross-fitting over 8) ECE 0.2062 -> 0.2491, no lower"
    )


def test_training_keeps_temperature_1_when_it_would_raise_held_out_ece() -> None:
    """Where training calls it: ``calibrate`` on a model that outputs the small split's
    probabilities keeps T = 1 and says so (it used to apply the fitted 0.69)."""
    import keras
    import tensorflow as tf

    from components.lib.modelling.model import calibrate

    probabilities, labels = small_split()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Identity()])
    validation = tf.data.Dataset.from_tensor_slices((probabilities, labels)).batch(3)

    temperature, figures = calibrate(model, validation)

    assert temperature == 1.0
    assert figures["val_ece_before"] == pytest.approx(0.20625)
    assert figures["val_ece_after"] == pytest.approx(0.20625)
    assert figures["decision"].startswith("temperature 1 kept (fitted 0.690 not applied)")


def test_a_temperature_that_lowers_held_out_ece_is_applied() -> None:
    """Overconfident (softmax(2z) for labels drawn from softmax(z)) on 400 photos: the
    cross-fitted temperatures lower the held-out ECE, so the one fitted on all is applied."""
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (400, 4))
    truth = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(4, p=row) for row in truth])

    choice = choose_temperature(scale(truth, 0.5), labels)

    assert choice.applied and choice.temperature == choice.fitted_temperature
    assert choice.temperature == pytest.approx(2.0, rel=0.2)
    assert choice.held_out_ece_after < 0.7 * choice.held_out_ece_before
    assert choice.describe().startswith(f"temperature {choice.temperature:.3f} applied: ")


def test_one_validation_photo_keeps_temperature_1() -> None:
    choice = choose_temperature(np.array([[0.7, 0.3]]), np.array([0]))
    assert choice.temperature == 1.0 and choice.folds == 1
    assert "too few" in choice.describe()


def test_evaluate_demo_model_through_serving_signature(
    demo_model_dir: Path, demo_data_dir: Path
) -> None:
    evaluation = evaluate_saved_model(str(demo_model_dir), str(demo_data_dir))
    assert evaluation.class_names == ["0astronaut", "1cat", "2coffee", "3rocket"]
    assert evaluation.count == 24
    assert evaluation.accuracy >= 0.9
    wrong = evaluation.count - sum(evaluation.confusion_matrix[i][i] for i in range(4))
    assert len(evaluation.misclassified) == wrong
    for item in evaluation.misclassified:
        assert Path(item.path).parent.name == item.true_class != item.predicted_class


def test_evaluate_refuses_data_with_other_classes(demo_model_dir: Path, tmp_path: Path) -> None:
    other = make_layout(tmp_path / "other")
    with pytest.raises(ClassMismatchError, match="trained on classes"):
        evaluate_saved_model(str(demo_model_dir), str(other))


def test_temperature_of_a_validation_split_without_errors_stays_finite() -> None:
    """40 photos all right, each at 0.9 (label smoothing's ceiling): the temperature sharpens them
    to about Laplace's 41/42, not to certainty."""
    probabilities = np.tile([0.9, 0.025, 0.025, 0.025, 0.025], (40, 1))
    labels = np.zeros(40, dtype=int)

    temperature = fit_temperature(probabilities, labels)

    confidence = scale(probabilities, temperature).max(axis=1)
    assert 0.2 < temperature < 0.9
    assert confidence == pytest.approx(np.full(40, 41 / 42), abs=1e-3)
