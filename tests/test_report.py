"""The evaluation report and the evaluate step's artifacts: what people see in the console."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from kfp import dsl

from components.lib.evaluation.metrics import Evaluation, evaluate_saved_model
from components.lib.evaluation.report import build_report

HISTORY = {
    "head_loss": [1.2, 0.8],
    "head_accuracy": [0.5, 0.8],
    "head_val_loss": [1.0, 0.9],
    "head_val_accuracy": [0.6, 0.7],
    "fine_tune_loss": [0.6],
    "fine_tune_accuracy": [0.9],
}


def embedded_png(page: str, image_id: str) -> bytes:
    match = re.search(rf'<img id="{image_id}"[^>]*src="data:image/png;base64,([^"]+)"', page)
    assert match, f"no embedded {image_id} picture"
    return base64.b64decode(match.group(1))


@pytest.fixture(scope="module")
def weak_evaluation(weak_model_dir: Path, demo_data_dir: Path) -> Evaluation:
    return evaluate_saved_model(str(weak_model_dir), str(demo_data_dir))


def test_report_embeds_pictures_and_lists_every_misclassified_image(
    weak_evaluation: Evaluation,
) -> None:
    assert len(weak_evaluation.misclassified) >= 10

    page = build_report(weak_evaluation, HISTORY, False, "accuracy 0.25 < required 0.8", None)

    assert embedded_png(page, "confusion-matrix").startswith(b"\x89PNG")
    assert embedded_png(page, "training-curves").startswith(b"\x89PNG")
    assert "Not deployed" in page and "accuracy 0.25 &lt; required 0.8" in page
    figures = re.findall(r'<figure class="mistake">(.*?)</figure>', page, re.S)
    assert len(figures) == len(weak_evaluation.misclassified)
    for figure, item in zip(figures, weak_evaluation.misclassified, strict=True):
        assert 'src="data:image/jpeg;base64,' in figure
        assert f"true: <b>{item.true_class}</b>" in figure
        assert f"predicted: <b>{item.predicted_class}</b>" in figure
        assert Path(item.path).name in figure
    for name, recall in weak_evaluation.recall().items():
        assert f"<th>{name}</th><td>6</td>" in page and f"{recall:.4f}" in page


def test_report_without_mistakes_or_history_says_so() -> None:
    perfect = Evaluation(["a", "b"], [[2, 0], [0, 3]])
    page = build_report(perfect, {}, True, "deploy", perfect)
    assert "every eval image is classified correctly" in page
    assert "No training history" in page
    assert "<th>champion accuracy</th><td>1.0000</td>" in page


def artifact(kind: type[dsl.Artifact], path: Path, metadata: dict | None = None) -> dsl.Artifact:
    return kind(name=path.name, uri=str(path), metadata=metadata or {})


def test_evaluate_step_writes_metrics_confusion_matrix_and_report(
    tmp_path: Path, demo_model_dir: Path, demo_data_dir: Path
) -> None:
    """The evaluate step's own function, with local artifacts: no champion serves yet."""
    from components.evaluate import evaluate_model

    metrics = artifact(dsl.Metrics, tmp_path / "metrics")
    matrix = artifact(dsl.ClassificationMetrics, tmp_path / "classification")
    report = artifact(dsl.HTML, tmp_path / "report.html")

    outputs = evaluate_model.python_func(
        raw_data=artifact(dsl.Dataset, demo_data_dir),
        model=artifact(dsl.Model, demo_model_dir, {"history": HISTORY}),
        min_accuracy=0.8,
        max_regression=0.0,
        endpoint_display_name="beer-classifier-endpoint",
        target="local",
        project="local-project",
        location="europe-west1",
        local_state_dir=str(tmp_path / "state"),
        metrics=metrics,
        classification_metrics=matrix,
        report=report,
    )

    assert outputs.deploy is True and outputs.champion_accuracy == -1.0
    assert outputs.reason.endswith("no champion serving: deploy")
    confusion = matrix.metadata["confusionMatrix"]
    assert [c["displayName"] for c in confusion["annotationSpecs"]] == [
        "0astronaut",
        "1cat",
        "2coffee",
        "3rocket",
    ]
    assert sum(map(sum, (row["row"] for row in confusion["rows"]))) == 24
    assert metrics.metadata["accuracy"] == round(outputs.accuracy, 4)
    assert 0.0 < metrics.metadata["macro_f1"] <= 1.0
    assert metrics.metadata["decision"] == outputs.reason
    assert "champion_accuracy" not in metrics.metadata
    assert {f"recall_{name}" for name in ("1cat", "3rocket")} <= set(metrics.metadata)
    assert json.loads((tmp_path / "metrics").read_text()) == metrics.metadata
    page = (tmp_path / "report.html").read_text()
    assert embedded_png(page, "confusion-matrix").startswith(b"\x89PNG")
    assert embedded_png(page, "training-curves").startswith(b"\x89PNG")
