"""Metrics from the confusion matrix, and the deploy decision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from components.lib.evaluation.metrics import (
    ClassMismatchError,
    Evaluation,
    confusion_matrix,
    deployment_decision,
    evaluate_saved_model,
)
from tests.conftest import make_layout


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
    ("accuracy", "required", "deploy", "words"),
    [
        (0.85, 0.80, True, "0.8500 >= required 0.8000, no champion serving: deploy"),
        (0.80, 0.80, True, ">= required"),
        (0.79, 0.80, False, "0.7900 < required 0.8000: not deployed"),
    ],
)
def test_deployment_decision(accuracy: float, required: float, deploy: bool, words: str) -> None:
    decided, reason = deployment_decision(accuracy, required)
    assert decided is deploy
    assert words in reason


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
