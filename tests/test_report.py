"""The evaluation report and the evaluate step's artifacts: what people see in the console."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from kfp import dsl

from components.lib.data.sources import download_dataset, fingerprint_source
from components.lib.data.validation import validate_dataset
from components.lib.evaluation.metrics import (
    COMPARED,
    NO_CHAMPION,
    Champion,
    Decision,
    Evaluation,
    GateRule,
    deployment_decision,
    evaluate_saved_model,
)
from components.lib.evaluation.model_evaluation import CLASSIFICATION_METRICS_SCHEMA
from components.lib.evaluation.report import Provenance, build_report
from components.lib.targets.local import EndpointRegistry, ModelRegistry
from tests.conftest import SERVING_BUDGETS, add_bad_files, make_layout

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
def weak_evaluation(
    demo_model_dir: Path, demo_data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Evaluation:
    """The demo model on the demo photos filed under the next class's name: a real evaluation
    with many mistakes, without training a weak model for it."""
    relabelled = tmp_path_factory.mktemp("relabelled")
    for split in ("train", "eval"):
        names = sorted(path.name for path in (demo_data_dir / split).iterdir())
        for name, next_name in zip(names, names[1:] + names[:1], strict=True):
            shutil.copytree(demo_data_dir / split / name, relabelled / split / next_name)
    return evaluate_saved_model(str(demo_model_dir), str(relabelled))


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
    assert (
        '<p id="decision"><b class="reject">Decision</b>: accuracy 0.25 &lt; required 0.8' in page
    )
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


def test_the_decision_line_says_the_verdict_once() -> None:
    evaluation = Evaluation(["a", "b"], [[2, 0], [0, 3]])
    decision = deployment_decision(evaluation, Champion(NO_CHAMPION), GateRule())
    page = build_report(evaluation, {}, decision, Champion(NO_CHAMPION), GateRule())
    line = re.search(r'<p id="decision">(.*?)</p>', page).group(1)
    assert line == (
        '<b class="deploy">Decision</b>: accuracy 1.0000 &gt;= required 0.8000, no champion '
        "serving: deploy"
    )


def test_report_says_which_data_model_and_time_and_what_validation_skipped(
    tmp_path: Path,
) -> None:
    """Through the real download and validate functions: the redacted source and its
    fingerprint, the model (not registered yet), the time in UTC and the skips by reason."""
    source = add_bad_files(
        make_layout(tmp_path / "source", {"0red": 6, "1blue": 6}), "0red", "1blue"
    )
    del source
    data_uri = str(tmp_path / "source")
    fingerprint, _ = fingerprint_source(data_uri)
    download_dataset(data_uri, str(tmp_path / "raw"), fingerprint=fingerprint)
    validate_dataset(
        str(tmp_path / "raw"), str(tmp_path / "clean"), str(tmp_path / "v.md"), 32, 0.5
    )
    an_hour_east = datetime.timezone(datetime.timedelta(hours=1))
    provenance = dataclasses.replace(
        Provenance.of(str(tmp_path / "clean"), "/runs/7/model"),
        evaluated_at=datetime.datetime(2026, 1, 2, 4, 5, 6, tzinfo=an_hour_east),
    )
    evaluation = Evaluation(["0red", "1blue"], [[6, 0], [0, 6]])
    page = build_report(
        evaluation, {}, Decision(True, "deploy"), Champion(NO_CHAMPION), GateRule(), "", provenance
    )

    facts = dict(re.findall(r"<tr id=\"[^\"]*\"><th>([^<]*)</th><td>([^<]*)</td></tr>", page))
    assert fingerprint.startswith("sha256:")
    assert facts["data"] == f"{data_uri} (fingerprint {fingerprint})"
    assert facts["model version"].startswith("not registered yet")
    assert facts["model artifact"] == "/runs/7/model"
    assert facts["evaluated at"] == "2026-01-02 03:05:06 UTC"
    assert facts["validation skipped"] == (
        "2 not an image file; 2 cannot be decoded: corrupt or truncated; 1 smaller than the "
        "minimum image size; 1 the same image again in the same split; 1 also in the eval split "
        "(dropped from train so that eval stays unseen)"
    )
    version = dataclasses.replace(provenance, model_version="projects/p/models/m@3", skipped={})
    assert version.facts()["model version"] == "projects/p/models/m@3"
    assert version.facts()["validation skipped"] == "none"
    assert Provenance.of(str(tmp_path / "elsewhere"), "").facts()["data"] == "not recorded"


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
        **SERVING_BUDGETS,
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
    assert "<th>model version</th><td>not registered yet" in page
    assert f"<th>model artifact</th><td>{demo_model_dir}</td>" in page
    assert re.search(r"<th>evaluated at</th><td>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", page)
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
        **SERVING_BUDGETS,
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


def many_class_evaluation() -> Evaluation:
    """120 classes (a dog-breed task's size) of 3 to 11 eval photos, generated: three planted
    confusions (class 7 read as 8 five times, 30 as 31 three times, 99 as 5 twice) and a
    scatter of single mistakes."""
    from components.lib.evaluation.metrics import confusion_matrix

    rng = np.random.default_rng(0)
    counts = rng.integers(3, 12, 120)
    counts[[7, 30, 99]] = 10
    labels = np.repeat(np.arange(120), counts)
    predictions = labels.copy()
    for (true, predicted), times in {(7, 8): 5, (30, 31): 3, (99, 5): 2}.items():
        predictions[np.flatnonzero(labels == true)[:times]] = predicted
    for photo in rng.choice(np.flatnonzero(~np.isin(labels, [7, 30, 99])), 25, replace=False):
        predictions[photo] = (labels[photo] + 1 + rng.integers(0, 118)) % 120
    matrix = confusion_matrix(labels, predictions, 120)
    return Evaluation([f"breed-{index:03d}" for index in range(120)], matrix.tolist())


def test_a_120_class_report_fits_the_page_and_lists_the_top_confusions() -> None:
    from PIL import Image

    from components.lib.evaluation.report import (
        PAGE_WIDTH_PX,
        TOP_CONFUSIONS,
        confusion_heatmap,
    )

    evaluation = many_class_evaluation()
    decision = Decision(True, "accuracy 0.95 >= required 0.8, no champion serving: deploy")

    page = build_report(evaluation, {}, decision, Champion(NO_CHAMPION), GateRule())

    with Image.open(io.BytesIO(embedded_png(page, "confusion-matrix"))) as picture:
        assert picture.width <= PAGE_WIDTH_PX
    assert "img{max-width:100%}" in page
    assert len(confusion_heatmap(evaluation).axes[0].texts) == 0, "no numbers in the cells"
    confusions = page.split('<table id="top-confusions">', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", confusions)[1:]
    assert len(rows) == TOP_CONFUSIONS
    cells = [re.findall(r"<t[dh]>(.*?)</t[dh]>", row) for row in rows[:3]]
    assert cells == [
        ["7", "breed-007", "8", "breed-008", "5", "50%"],
        ["30", "breed-030", "31", "breed-031", "3", "30%"],
        ["99", "breed-099", "5", "breed-005", "2", "20%"],
    ]
    per_class = page.split('<table id="per-class">', 1)[1].split("</table>", 1)[0]
    classes = [
        re.findall(r"<t[dh]>(.*?)</t[dh]>", row) for row in re.findall(r"<tr>(.*?)</tr>", per_class)
    ]
    assert classes[0] == ["#", "class", "images", "precision", "recall (accuracy)", "F1"]
    assert len(classes) == 121, "every class, sorted by accuracy"
    assert classes[1][:3] == ["7", "breed-007", "10"] and classes[1][4] == "0.5000"
    accuracies = [float(row[4]) for row in classes[1:]]
    assert accuracies == sorted(accuracies) and accuracies[-1] == 1.0


def test_a_report_of_a_dozen_classes_keeps_counts_in_the_cells() -> None:
    from components.lib.evaluation.report import MANY_CLASSES, confusion_matrix_png

    names = [f"c{index}" for index in range(MANY_CLASSES)]
    matrix = (np.eye(MANY_CLASSES, dtype=int) * 3).tolist()
    page = build_report(
        Evaluation(names, matrix), {}, Decision(True, "deploy"), Champion(NO_CHAMPION), GateRule()
    )
    assert 'id="top-confusions"' not in page and "<th>#</th>" not in page
    assert confusion_matrix_png(Evaluation(names, matrix)) in page


def test_class_names_with_dollar_signs_are_drawn_as_written() -> None:
    """A class folder named like matplotlib math (``$...$``) is a name, not a formula: the report
    is built, and the names appear verbatim."""
    names = [r"$\notacommand$", "cost $5 or $10", "plain"]
    evaluation = Evaluation(names, [[2, 0, 0], [0, 3, 0], [0, 1, 1]])
    page = build_report(
        evaluation, HISTORY, Decision(True, "deploy"), Champion(NO_CHAMPION), GateRule(), "carved"
    )
    assert embedded_png(page, "confusion-matrix").startswith(b"\x89PNG")
    assert "<th>$\\notacommand$</th>" in page
