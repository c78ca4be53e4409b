"""Edge export: TFLite models (float16, int8 calibrated on training images) written beside the
SavedModel, scored on the eval split with tf.lite.Interpreter, shown by the evaluate step and
kept by the registry with the version."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from kfp import dsl

from components.lib.evaluation.edge import EdgeInterpreter, evaluate_edge_models
from components.lib.evaluation.metrics import evaluate_saved_model
from components.lib.modelling.edge import FLOAT16, INT8, EdgeModel, read_edge_models

TEMPERATURE = 0.5
# The tests that use ``edge_export`` are slow: it trains a model and converts it twice (about
# 9.5 minutes for the module at a load average of 15 on this 2-core machine).


@pytest.fixture(scope="module")
def edge_export(
    demo_data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[EdgeModel], int]:
    """The demo classifier, briefly trained at 64 px, exported with T = 0.5 as a SavedModel
    and as TFLite; returns the model folder, the edge models and the training image count."""
    from components.lib.data.records import TRAIN, preprocess_dataset
    from components.lib.modelling.config import TrainingConfig
    from components.lib.modelling.edge import export_edge_models
    from components.lib.modelling.model import export_serving_model, train_classifier

    work = tmp_path_factory.mktemp("edge")
    dataset = preprocess_dataset(str(demo_data_dir), str(work / "records"), image_size=64)
    trained = train_classifier(dataset, TrainingConfig(epochs=3, fine_tune_epochs=0))
    model_dir = work / "model"
    export_serving_model(trained.model, dataset.class_names, 64, str(model_dir), TEMPERATURE)
    models = export_edge_models(trained.model, dataset, str(model_dir), TEMPERATURE)
    return model_dir, models, dataset.split_size(TRAIN)


@pytest.mark.slow
def test_export_writes_float16_and_int8_models_with_labels(
    edge_export: tuple[Path, list[EdgeModel], int],
) -> None:
    model_dir, models, train_images = edge_export
    assert [model.kind for model in models] == [FLOAT16, INT8]
    assert read_edge_models(str(model_dir)) == models
    float16, int8 = models
    for model in models:
        assert (model_dir / model.file).stat().st_size == model.size_bytes
    assert int8.size_bytes < 0.7 * float16.size_bytes
    assert int8.calibration_images == min(200, train_images) and float16.calibration_images == 0
    labels = (model_dir / "tflite" / "labels.txt").read_text().splitlines()
    assert labels == json.loads((model_dir / "class_names.json").read_text())
    interpreter = EdgeInterpreter(str(model_dir / int8.file))._interpreter
    [pixels], [output] = interpreter.get_input_details(), interpreter.get_output_details()
    assert pixels["dtype"] == np.uint8 and output["dtype"] == np.uint8
    assert pixels["shape"].tolist() == [1, 64, 64, 3]
    assert not read_edge_models(str(model_dir / "tflite")), "no export: no edge models"


@pytest.mark.slow
def test_edge_models_answer_as_the_saved_model_does(
    edge_export: tuple[Path, list[EdgeModel], int], demo_data_dir: Path
) -> None:
    """float16 serves the SavedModel's calibrated probabilities (the temperature folded into
    the head); int8 classifies the photos as it does, within quantization's error."""
    model_dir, _, _ = edge_export
    reference = evaluate_saved_model(str(model_dir), str(demo_data_dir))

    float16, int8 = evaluate_edge_models(str(model_dir), str(demo_data_dir))

    assert float16.evaluation.photos == reference.photos == int8.evaluation.photos
    np.testing.assert_allclose(float16.evaluation.probabilities, reference.probabilities, atol=0.01)
    assert float16.evaluation.confusion_matrix == reference.confusion_matrix
    np.testing.assert_allclose(int8.evaluation.probabilities, reference.probabilities, atol=0.1)
    assert abs(int8.evaluation.correct - reference.correct) <= 1
    figures = int8.to_dict(reference)
    assert figures["kind"] == "int8" and figures["size_bytes"] == int8.model.size_bytes
    assert figures["accuracy_change"] == round(int8.evaluation.accuracy - reference.accuracy, 4)


def test_a_model_without_edge_export_has_no_edge_scores(
    demo_model_dir: Path, demo_data_dir: Path
) -> None:
    assert evaluate_edge_models(str(demo_model_dir), str(demo_data_dir)) == []


@pytest.mark.slow
def test_evaluate_step_scores_and_reports_the_edge_models(
    edge_export: tuple[Path, list[EdgeModel], int], demo_data_dir: Path, tmp_path: Path
) -> None:
    from components.evaluate import evaluate_model

    model_dir, models, _ = edge_export

    def artifact(kind: type[dsl.Artifact], path: Path) -> dsl.Artifact:
        return kind(name=path.name, uri=str(path), metadata={})

    metrics = artifact(dsl.Metrics, tmp_path / "metrics")
    report = artifact(dsl.HTML, tmp_path / "report.html")
    outputs = evaluate_model.python_func(
        raw_data=artifact(dsl.Dataset, demo_data_dir),
        model=artifact(dsl.Model, model_dir),
        min_accuracy=0.0,
        max_regression=0.0,
        allow_class_change=False,
        max_latency_p95_ms=1000.0,
        max_model_size_mb=100.0,
        max_load_seconds=300.0,
        endpoint_display_name="edge-endpoint",
        target="local",
        project="local-project",
        location="europe-west1",
        local_state_dir=str(tmp_path / "state"),
        metrics=metrics,
        classification_metrics=artifact(dsl.ClassificationMetrics, tmp_path / "matrix"),
        report=report,
        model_evaluation=artifact(dsl.Artifact, tmp_path / "model-evaluation"),
    )

    edge = outputs.summary["tflite"]
    assert [entry["kind"] for entry in edge] == ["float16", "int8"]
    assert [entry["size_bytes"] for entry in edge] == [model.size_bytes for model in models]
    assert edge[0]["accuracy"] == round(outputs.accuracy, 4)
    assert metrics.metadata["tflite_int8_accuracy"] == edge[1]["accuracy"]
    assert metrics.metadata["tflite_int8_mb"] == round(models[1].size_bytes / 1e6, 3)
    page = (tmp_path / "report.html").read_text()
    table = page.split('<table id="edge-models">', 1)[1].split("</table>", 1)[0]
    assert "<th>int8</th><td>tflite/int8.tflite</td>" in table
    assert f"{models[1].size_bytes / 1e6:.2f} MB" in table


@pytest.mark.slow
def test_the_local_registry_keeps_the_edge_models_with_the_version(
    edge_export: tuple[Path, list[EdgeModel], int], tmp_path: Path
) -> None:
    from components.lib.targets.local import ModelRegistry

    model_dir, models, _ = edge_export
    version = ModelRegistry(str(tmp_path), "local-project", "europe-west1").upload_version(
        display_name="edge-classifier", artifact_dir=str(model_dir), metrics={}, labels={}
    )

    kept = read_edge_models(version.artifact_uri)
    assert kept == models
    for model in kept:
        assert os.path.getsize(os.path.join(version.artifact_uri, model.file)) == model.size_bytes
