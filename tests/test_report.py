"""The evaluation report and the evaluate step's artifacts: what people see in the console."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from kfp import dsl

from components.lib.evaluation.metrics import (
    COMPARED,
    NO_CHAMPION,
    Champion,
    Decision,
    Evaluation,
    GateRule,
    evaluate_saved_model,
)
from components.lib.evaluation.model_evaluation import CLASSIFICATION_METRICS_SCHEMA
from components.lib.evaluation.report import build_report
from components.lib.targets.local import EndpointRegistry, ModelRegistry
from tests.conftest import make_layout

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

    page = build_report(
        weak_evaluation,
        HISTORY,
        Decision(False, "accuracy 0.25 < required 0.8"),
        Champion(NO_CHAMPION),
        GateRule(),
    )

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
    page = build_report(
        perfect, {}, Decision(True, "deploy"), Champion(COMPARED, perfect), GateRule(), "carved"
    )
    assert "every eval image is classified correctly" in page
    assert "No training history" in page
    assert "<th>champion</th><td>1.0000 (5 of 5), the served model on the same photos" in page
    assert (
        "<th>accuracy</th><td>1.0000 (5 of 5); 95% confidence interval 0.5655 to 1.0000 "
        "(Wilson)</td>" in page
    )
    assert "<th>eval split</th><td>carved</td>" in page
    assert "<th>calibration</th><td>not measured</td>" in page
    assert "<th>gate rule</th><td>deploy when accuracy &gt;= 0.8000" in page


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
    registry_record = artifact(dsl.Artifact, tmp_path / "model-evaluation")

    outputs = evaluate_model.python_func(
        raw_data=artifact(dsl.Dataset, demo_data_dir),
        model=artifact(dsl.Model, demo_model_dir, {"history": HISTORY}),
        min_accuracy=0.8,
        max_regression=0.0,
        allow_class_change=False,
        endpoint_display_name="beer-classifier-endpoint",
        target="local",
        project="local-project",
        location="europe-west1",
        local_state_dir=str(tmp_path / "state"),
        metrics=metrics,
        classification_metrics=matrix,
        report=report,
        model_evaluation=registry_record,
    )

    assert outputs.deploy is True and outputs.champion_accuracy == -1.0
    assert outputs.reason.endswith("no champion serving: deploy")
    assert outputs.summary["champion_status"] == "none"
    assert outputs.summary["champion"] == "none served"
    low, high = outputs.summary["accuracy_ci95"]
    assert low < outputs.accuracy <= high and outputs.summary["eval_images"] == 24
    assert outputs.summary["temperature"] == 1.0, "trained without a validation split"
    assert outputs.summary["ece_before"] == outputs.summary["ece_after"] < 1
    assert outputs.summary["gate"]["min_accuracy"] == 0.8
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
    # What the upload step will register as the version's evaluation.
    record = json.loads((tmp_path / "model-evaluation" / "evaluation.json").read_text())
    assert record["metrics_schema_uri"] == CLASSIFICATION_METRICS_SCHEMA
    schema_matrix = record["metrics"]["confusionMatrix"]
    assert schema_matrix["annotationSpecs"][1] == {"id": "1", "displayName": "1cat"}
    assert schema_matrix["rows"] == [row["row"] for row in confusion["rows"]]
    [at_zero] = [m for m in record["metrics"]["confidenceMetrics"] if m["confidenceThreshold"] == 0]
    assert at_zero["precisionAt1"] == at_zero["recallAt1"] == outputs.accuracy
    assert [s["value"] for s in record["slices"]] == ["0astronaut", "1cat", "2coffee", "3rocket"]
    assert record["fingerprint"] == outputs.summary["eval_fingerprint"]
    assert record["fingerprint"].startswith("sha256:")
    assert record["rows_uri"] == str(tmp_path / "model-evaluation" / "predictions.jsonl")
    rows = [json.loads(line) for line in Path(record["rows_uri"]).read_text().splitlines()]
    assert len(rows) == 24 and rows[0]["photo"].startswith("eval/0astronaut/")


@pytest.mark.slow
def test_evaluate_step_says_a_champion_serves_but_is_not_compared(
    tmp_path: Path, demo_model_dir: Path
) -> None:
    """A 2-class challenger against the served 4-class demo model: not deployed, and the
    metrics, the summary output and the report each say that a champion serves and why it was
    not compared."""
    from components.evaluate import evaluate_model

    state = tmp_path / "state"
    version = ModelRegistry(str(state), "local-project", "europe-west1").upload_version(
        "beer-classifier", str(demo_model_dir), {}, {}
    )
    EndpointRegistry(str(state), "local-project", "europe-west1").deploy("beer-ep", version)
    data = make_layout(tmp_path / "data")
    metrics = artifact(dsl.Metrics, tmp_path / "metrics")

    outputs = evaluate_model.python_func(
        raw_data=artifact(dsl.Dataset, data),
        model=artifact(dsl.Model, _two_class_model(tmp_path, data)),
        min_accuracy=0.0,
        max_regression=0.0,
        allow_class_change=False,
        endpoint_display_name="beer-ep",
        target="local",
        project="local-project",
        location="europe-west1",
        local_state_dir=str(state),
        metrics=metrics,
        classification_metrics=artifact(dsl.ClassificationMetrics, tmp_path / "classification"),
        report=artifact(dsl.HTML, tmp_path / "report.html"),
        model_evaluation=artifact(dsl.Artifact, tmp_path / "model-evaluation"),
    )

    reason = (
        "it was trained on 4 classes ['0astronaut', '1cat', '2coffee', '3rocket'], this model "
        "on 2 ['0red', '1blue']"
    )
    assert outputs.deploy is False and outputs.champion_accuracy == -1.0
    assert f"a champion serves but could not be compared ({reason})" in outputs.reason
    assert outputs.summary["champion_status"] == "not_comparable"
    assert outputs.summary["champion"] == f"a model serves but could not be compared: {reason}"
    assert metrics.metadata["champion_status"] == "not_comparable"
    assert metrics.metadata["champion"] == outputs.summary["champion"]
    page = (tmp_path / "report.html").read_text()
    assert "a model serves but could not be compared: it was trained on 4 classes" in page
    assert "none served" not in page and "none serving" not in page


def _two_class_model(tmp_path: Path, data: Path) -> Path:
    """A tiny model of the layout's two colour classes (head only, 32 px)."""
    from components.lib.data.records import preprocess_dataset
    from components.lib.modelling.model import (
        TrainingConfig,
        export_serving_model,
        train_classifier,
    )

    dataset = preprocess_dataset(str(data), str(tmp_path / "records"), image_size=32)
    trained = train_classifier(dataset, TrainingConfig(epochs=1, fine_tune_epochs=0))
    export_serving_model(trained.model, dataset.class_names, 32, str(tmp_path / "model"))
    return tmp_path / "model"
