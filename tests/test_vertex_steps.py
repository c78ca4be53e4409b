"""The Vertex target's evaluate -> upload -> deploy steps, run as the pipeline runs them, on real
small models stored in Cloud Storage (the GCS emulator) against the Vertex AI emulator."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from kfp import dsl

from components.deploy import deploy_model
from components.evaluate import evaluate_model
from components.lib.artifacts import VertexEndpoint, VertexModel
from components.lib.evaluation.metrics import evaluate_champion, evaluate_saved_model
from components.lib.storage import local_copy
from components.upload import upload_model
from tests.conftest import VERTEX_LOCATION, VERTEX_PROJECT, upload_folder
from tests.vertex_emulator import VertexEmulator

TARGET = {"target": "vertex", "project": VERTEX_PROJECT, "location": VERTEX_LOCATION}
ENDPOINT = "beer-endpoint"


def test_a_champion_in_cloud_storage_is_read_through_the_storage_seam(
    emulated_gcs, demo_model_dir: Path, demo_data_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    uri = upload_folder(emulated_gcs, demo_model_dir, f"{tmp_path.name}/registry/model")
    expected = evaluate_saved_model(str(demo_model_dir), str(demo_data_dir)).accuracy

    # No /gcs mount (a laptop, a serving container): downloaded with gcsfs.
    champion = evaluate_champion(uri, str(demo_data_dir))
    assert champion.accuracy == expected
    copy = Path(local_copy(uri))
    assert (copy / "saved_model.pb").is_file() and (copy / "class_names.json").is_file()
    assert not copy.is_relative_to("/nonexistent-gcs-mount")

    # On Vertex AI the bucket is mounted: read there, nothing downloaded.
    mount = tmp_path / "gcs"
    mirrored = mount / uri.removeprefix("gs://")
    mirrored.parent.mkdir(parents=True)
    mirrored.symlink_to(demo_model_dir, target_is_directory=True)
    monkeypatch.setenv("BEER_GCS_MOUNT_ROOT", str(mount))
    assert local_copy(uri) == str(mirrored)
    assert evaluate_champion(uri, str(demo_data_dir)).accuracy == expected


def run_gated_steps(model_uri: str, data_dir: Path, work: Path, run: str) -> dict:
    """What the pipeline does from evaluate on, for the Vertex target: the steps' own code."""
    work.mkdir(parents=True)
    evaluation = evaluate_model.python_func(
        raw_data=dsl.Dataset(uri=str(data_dir)),
        model=dsl.Model(uri=model_uri),
        min_accuracy=0.5,
        max_regression=0.0,
        allow_class_change=False,
        endpoint_display_name=ENDPOINT,
        local_state_dir="",
        metrics=dsl.Metrics(uri=str(work / "metrics")),
        classification_metrics=dsl.ClassificationMetrics(uri=str(work / "confusion")),
        report=dsl.HTML(uri=str(work / "report.html")),
        **TARGET,
    )
    assert evaluation.deploy, evaluation.reason
    version = upload_model.python_func(
        model=dsl.Model(uri=model_uri),
        accuracy=evaluation.accuracy,
        champion_accuracy=evaluation.champion_accuracy,
        decision=evaluation.reason,
        evaluation=evaluation.summary,
        model_display_name="beer-classifier",
        pipeline_job=run,
        serving_image="",
        accelerator_type="",
        local_state_dir="",
        vertex_model=VertexModel(uri=str(work / "vertex-model")),
        **TARGET,
    )
    endpoint = deploy_model.python_func(
        model_version=version,
        endpoint_display_name=ENDPOINT,
        machine_type="n1-standard-2",
        min_replicas=1,
        max_replicas=1,
        accelerator_type="",
        accelerator_count=0,
        traffic_percentage=100,
        service_account="beer-serving@test-project.iam.gserviceaccount.com",
        local_state_dir="",
        vertex_endpoint=VertexEndpoint(uri=str(work / "vertex-endpoint")),
        **TARGET,
    )
    return {"evaluation": evaluation, "version": version, "endpoint": endpoint}


@pytest.mark.slow
def test_evaluate_upload_deploy_on_vertex_run_after_run_with_a_champion_serving(
    vertex_emulator: VertexEmulator,
    emulated_gcs,
    demo_model_dir: Path,
    demo_data_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    root = f"{tmp_path.name}/pipeline-root"
    trained = upload_folder(emulated_gcs, demo_model_dir, f"{root}/run-1/train-model/model")
    accuracy = evaluate_saved_model(str(demo_model_dir), str(demo_data_dir)).accuracy

    first = run_gated_steps(trained, demo_data_dir, tmp_path / "run-1", "run-1")
    assert first["evaluation"].champion_accuracy == -1.0
    assert first["version"].endswith("@1")

    # The same data and parameters again: training was cached, so the model is the served one.
    caplog.clear()
    again = run_gated_steps(trained, demo_data_dir, tmp_path / "run-2", "run-2")
    assert again["evaluation"].accuracy == again["evaluation"].champion_accuracy == accuracy
    assert again["evaluation"].reason.endswith(
        f"(the same model as {first['version']}, served already)"
    )
    assert again["version"] == first["version"]
    assert len(vertex_emulator.calls("UploadModel")) == 1, "not registered again"
    assert len(vertex_emulator.calls("DeployModel")) == 1, "not redeployed"
    assert f"{first['version']} is this model already: not registered again" in caplog.text
    assert "already serves (not redeployed)" in caplog.text

    # New data: a retrained model, scored against the champion read back from Cloud Storage.
    retrained = upload_folder(emulated_gcs, demo_model_dir, f"{root}/run-3/train-model/model")
    third = run_gated_steps(retrained, demo_data_dir, tmp_path / "run-3", "run-3")
    assert third["evaluation"].champion_accuracy == accuracy
    assert "served already" not in third["evaluation"].reason
    assert third["version"].endswith("@2")
    [endpoint] = vertex_emulator.endpoints.values()
    assert [d.model_version_id for d in endpoint.deployed_models] == ["2"]
    assert dict(endpoint.traffic_split) == {endpoint.deployed_models[0].id: 100}
    assert [d.deployed_model.service_account for d in vertex_emulator.calls("DeployModel")] == [
        "beer-serving@test-project.iam.gserviceaccount.com"
    ] * 2
