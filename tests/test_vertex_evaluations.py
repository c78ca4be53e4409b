"""A version's evaluation in the Vertex AI Model Registry, on the wire: the real SDK against the
Vertex AI emulator (ImportModelEvaluation, its slices, and reading it back the SDK's way)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc
import pytest
from google.api_core import exceptions
from google.cloud import aiplatform, aiplatform_v1

from components.lib.evaluation.model_evaluation import CLASSIFICATION_METRICS_SCHEMA
from components.lib.targets import model_registry
from components.lib.targets.base import ModelEvaluationRecord, ModelVersion
from components.lib.targets.vertex import SLICE_BATCH
from tests.conftest import VERTEX_LOCATION, VERTEX_PROJECT, gcs_emulator_client, upload_folder
from tests.test_model_evaluation import CLASSES, crafted, record_of
from tests.vertex_emulator import VertexEmulator

pytestmark = pytest.mark.vertex_emulator

IMAGE = "europe-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"


@pytest.fixture(scope="module", autouse=True)
def artifact(gcs_emulator: str, colour_models: dict) -> None:
    client = gcs_emulator_client(gcs_emulator)
    upload_folder(client, colour_models["v1"], "evaluated/model", "bucket")


def registered() -> tuple[object, ModelVersion]:
    registry = model_registry("vertex", "", VERTEX_PROJECT, VERTEX_LOCATION, IMAGE)
    return registry, registry.upload_version("beer", "gs://bucket/evaluated/model", {}, {})


def evaluation(tmp_path: Path, digit: str = "0") -> ModelEvaluationRecord:
    return record_of(crafted("sha256:" + digit * 64), tmp_path / f"evaluation-{digit}")


def test_the_evaluation_is_imported_with_its_slices_and_read_back_by_the_sdk(
    vertex_emulator: VertexEmulator, tmp_path: Path
) -> None:
    registry, version = registered()
    record = evaluation(tmp_path)

    stored = registry.import_evaluation(version, record)

    [sent] = vertex_emulator.calls("ImportModelEvaluation")
    assert sent.parent == version.resource_name  # the version, not the model's default
    sent_evaluation = sent.model_evaluation
    assert sent_evaluation.metrics_schema_uri == CLASSIFICATION_METRICS_SCHEMA
    assert list(sent_evaluation.slice_dimensions) == ["annotationSpec"]
    matrix = sent_evaluation.metrics["confusionMatrix"]
    assert [spec["displayName"] for spec in matrix["annotationSpecs"]] == CLASSES
    assert [list(row) for row in matrix["rows"]] == [[2, 0, 0], [1, 1, 0], [0, 0, 2]]
    assert sent_evaluation.metadata["eval_fingerprint"] == record.fingerprint
    assert sent_evaluation.metadata["row_based_metrics_path"] == record.rows_uri
    [slices] = vertex_emulator.calls("BatchImportModelEvaluationSlices")
    assert slices.parent == stored.name
    assert [(s.slice_.dimension, s.slice_.value) for s in slices.model_evaluation_slices] == [
        ("annotationSpec", name) for name in CLASSES
    ]
    assert {s.metrics_schema_uri for s in slices.model_evaluation_slices} == {
        CLASSIFICATION_METRICS_SCHEMA
    }

    # The SDK's own way to read it, as a notebook or the console's Evaluate tab does.
    model = aiplatform.Model(version.model, version=version.version_id)
    read = model.get_model_evaluation()
    assert read.resource_name == stored.name
    assert read.metrics["confusionMatrix"]["annotationSpecs"][1]["displayName"] == "dog"
    at_zero = next(m for m in read.metrics["confidenceMetrics"] if m["confidenceThreshold"] == 0)
    assert at_zero["precisionAt1"] == pytest.approx(5 / 6), "the accuracy"
    # This target's reading: the same record, slices and all.
    [listed] = registry.list_evaluations(version)
    assert (listed.name, listed.fingerprint, listed.rows_uri) == (
        stored.name,
        record.fingerprint,
        record.rows_uri,
    )
    assert listed.metrics["auPrc"] == pytest.approx(record.metrics["auPrc"])
    assert [s["value"] for s in listed.slices] == CLASSES
    dog = next(s for s in listed.slices if s["value"] == "dog")
    dog_at_zero = next(
        m for m in dog["metrics"]["confidenceMetrics"] if m["confidenceThreshold"] == 0
    )
    assert dog_at_zero["recallAt1"] == 0.5
    assert listed.metadata["class_names"] == CLASSES

    # Again with the same eval photos: nothing new is imported.
    assert registry.import_evaluation(version, record).name == stored.name
    assert len(vertex_emulator.calls("ImportModelEvaluation")) == 1


def test_a_lost_reply_does_not_import_twice_and_slices_come_in_batches(
    vertex_emulator: VertexEmulator, tmp_path: Path
) -> None:
    registry, version = registered()
    record = evaluation(tmp_path)
    many = [{**record.slices[0], "value": f"class-{i}"} for i in range(SLICE_BATCH + 3)]
    vertex_emulator.fail_after("ImportModelEvaluation", grpc.StatusCode.UNAVAILABLE)

    stored = registry.import_evaluation(version, dataclasses.replace(record, slices=many))

    assert len(vertex_emulator.calls("ImportModelEvaluation")) == 1, "recovered, not retried"
    batches = vertex_emulator.calls("BatchImportModelEvaluationSlices")
    assert [len(b.model_evaluation_slices) for b in batches] == [SLICE_BATCH, 3]
    assert len(stored.slices) == SLICE_BATCH + 3
    [listed] = registry.list_evaluations(version)
    assert listed.name == stored.name


def test_the_emulator_checks_what_the_service_checks_and_pages(
    vertex_emulator: VertexEmulator, tmp_path: Path
) -> None:
    registry, version = registered()
    client = aiplatform_v1.ModelServiceClient(
        credentials=aiplatform.initializer.global_config.credentials,
        client_options={"api_endpoint": f"localhost:{vertex_emulator.port}"},
    )
    plain = aiplatform_v1.ModelEvaluation(metrics_schema_uri=CLASSIFICATION_METRICS_SCHEMA)
    plain.metrics = {"auPrc": 1.0}
    with pytest.raises(exceptions.NotFound):
        client.import_model_evaluation(parent=f"{version.model}@9", model_evaluation=plain)
    with pytest.raises(exceptions.InvalidArgument, match="metrics_schema_uri is required"):
        client.import_model_evaluation(
            parent=version.resource_name,
            model_evaluation=aiplatform_v1.ModelEvaluation(metrics={"auPrc": 1.0}),
        )

    for digit in "123":
        registry.import_evaluation(version, evaluation(tmp_path, digit))
    pages = client.list_model_evaluations(
        request={"parent": version.resource_name, "page_size": 2}
    ).pages
    assert [len(page.model_evaluations) for page in pages] == [2, 1]
    assert [e.fingerprint for e in registry.list_evaluations(version)] == [
        "sha256:" + digit * 64 for digit in "123"
    ]
    name = registry.list_evaluations(version)[0].name
    assert client.get_model_evaluation(name=name).name == name
    with pytest.raises(exceptions.InvalidArgument, match=r"slice\.dimension is required"):
        client.batch_import_model_evaluation_slices(
            parent=name,
            model_evaluation_slices=[
                aiplatform_v1.ModelEvaluationSlice(metrics_schema_uri=CLASSIFICATION_METRICS_SCHEMA)
            ],
        )
