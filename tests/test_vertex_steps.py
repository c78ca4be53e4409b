"""The Vertex target's evaluate -> upload -> deploy steps, run as the pipeline runs them, on real
small models stored in Cloud Storage (the GCS emulator) against the Vertex AI emulator."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from kfp import dsl

from components.evaluate import evaluate_model
from components.images import PLACEHOLDERS
from components.infra_validate import infra_validate
from components.lib.artifacts import VertexModel
from components.lib.evaluation.metrics import evaluate_champion, evaluate_saved_model
from components.lib.storage import local_copy, mounted_path
from components.lib.targets.base import Serving
from components.upload import upload_model
from tests.conftest import (
    GCS_BUCKET,
    SERVING_BUDGETS,
    VERTEX_TARGET,
    deploy_step,
    make_layout,
    upload_folder,
)
from tests.vertex_emulator import VertexEmulator

ENDPOINT = "beer-endpoint"


def test_a_champion_in_cloud_storage_is_read_through_the_storage_seam(
    emulated_gcs, colour_models: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    model_dir = colour_models["v1"]
    data_dir = make_layout(tmp_path / "data", {"0red": 2, "1blue": 2, "2green": 2})
    uri = upload_folder(emulated_gcs, model_dir, f"{tmp_path.name}/registry/model")
    expected = evaluate_saved_model(str(model_dir), str(data_dir)).accuracy
    assert expected == 1.0, "the colour model tells the colours apart"

    # No /gcs mount (a laptop, a serving container): downloaded with gcsfs.
    champion = evaluate_champion(uri, str(data_dir))
    assert champion.accuracy == expected
    copy = Path(local_copy(uri))
    assert (copy / "saved_model.pb").is_file() and (copy / "class_names.json").is_file()
    assert not copy.is_relative_to("/nonexistent-gcs-mount")

    # On Vertex AI the bucket is mounted: read there, nothing downloaded.
    mount = tmp_path / "gcs"
    mirrored = mount / uri.removeprefix("gs://")
    mirrored.parent.mkdir(parents=True)
    mirrored.symlink_to(model_dir, target_is_directory=True)
    monkeypatch.setenv("IMAGE_CLASSIFIER_GCS_MOUNT_ROOT", str(mount))
    assert local_copy(uri) == str(mirrored)
    assert evaluate_champion(uri, str(data_dir)).accuracy == expected


def run_gated_steps(model_uri: str, data_dir: Path, work: Path, run: str) -> dict:
    """What the pipeline does from evaluate on, for the Vertex target: the steps' own code."""
    work.mkdir(parents=True)
    # Written where a Vertex AI step writes it: in Cloud Storage, through the bucket's mount.
    mounted = mounted_path(f"gs://{GCS_BUCKET}/{work.parent.name}/{run}/model-evaluation")
    registry_record = dsl.Artifact(uri=mounted)
    evaluation = evaluate_model.python_func(
        raw_data=dsl.Dataset(uri=str(data_dir)),
        model=dsl.Model(uri=model_uri),
        min_accuracy=0.5,
        max_regression=0.0,
        allow_class_change=False,
        **SERVING_BUDGETS,
        endpoint_display_name=ENDPOINT,
        local_state_dir="",
        metrics=dsl.Metrics(uri=str(work / "metrics")),
        classification_metrics=dsl.ClassificationMetrics(uri=str(work / "confusion")),
        report=dsl.HTML(uri=str(work / "report.html")),
        model_evaluation=registry_record,
        **VERTEX_TARGET,
    )
    assert evaluation.deploy, evaluation.reason
    # The serving image's server on the model in Cloud Storage, as on Vertex AI (gcsfs reads
    # it: no mount holds it).
    completed = dsl.Artifact(uri=f"{mounted}-served")
    served = infra_validate.python_func(
        model=dsl.Model(uri=model_uri),
        raw_data=dsl.Dataset(uri=str(data_dir)),
        evaluation=registry_record,
        evaluation_report=dsl.HTML(uri=str(work / "report.html")),
        evaluate_deploy=evaluation.deploy,
        evaluate_reason=evaluation.reason,
        evaluation_summary=evaluation.summary,
        metrics=dsl.Metrics(uri=str(work / "serving-metrics")),
        report=dsl.HTML(uri=str(work / "served-report.html")),
        model_evaluation=completed,
    )
    assert served.deploy, served.reason
    version = upload_model.python_func(
        model=dsl.Model(uri=model_uri),
        model_evaluation=completed,
        accuracy=evaluation.accuracy,
        champion_accuracy=evaluation.champion_accuracy,
        decision=served.reason,
        evaluation=served.summary,
        model_display_name="beer-classifier",
        pipeline_job=run,
        serving_image=PLACEHOLDERS.serving,
        accelerator_type="",
        local_state_dir="",
        vertex_model=VertexModel(uri=str(work / "vertex-model")),
        **VERTEX_TARGET,
    )
    account = Serving(service_account="beer-serving@test-project.iam.gserviceaccount.com")
    endpoint, _ = deploy_step(version, ENDPOINT, str(work / "vertex-endpoint"), account)
    return {"evaluation": evaluation, "served": served, "version": version, "endpoint": endpoint}


@pytest.mark.slow
def test_evaluate_upload_deploy_on_vertex_run_after_run_with_a_champion_serving(
    vertex_emulator: VertexEmulator,
    emulated_gcs,
    demo_model_dir: Path,
    demo_data_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    vertex_emulator.iam.grant_act_as("beer-serving@test-project.iam.gserviceaccount.com")
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("FSSPEC_GS_TOKEN", "anon")  # the server's process reads the emulator too
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

    [imported] = vertex_emulator.calls("ImportModelEvaluation")
    assert imported.parent == first["version"], "the evaluation of the first run, once"
    assert (
        imported.model_evaluation.metadata["eval_fingerprint"]
        == (first["evaluation"].summary["eval_fingerprint"])
    )
    serving = dict(imported.model_evaluation.metadata["serving"])
    assert serving == first["served"].summary["serving"], "infra validation's figures"
    assert serving["photos_checked"] == first["evaluation"].summary["eval_images"]

    # A retrained model on the same photos: the champion's results come from the registry.
    retrained = upload_folder(emulated_gcs, demo_model_dir, f"{root}/run-3/train-model/model")
    third = run_gated_steps(retrained, demo_data_dir, tmp_path / "run-3", "run-3")
    assert third["evaluation"].champion_accuracy == accuracy
    assert "served already" not in third["evaluation"].reason
    assert "(read from its evaluation in the model registry (same eval photos" in (
        third["evaluation"].reason
    )
    assert "served model (champion): read from its evaluation" in caplog.text
    assert third["version"].endswith("@2")
    assert [r.parent for r in vertex_emulator.calls("ImportModelEvaluation")][1:] == [
        third["version"]
    ]
    [endpoint] = vertex_emulator.endpoints.values()
    assert [d.model_version_id for d in endpoint.deployed_models] == ["2"]
    assert dict(endpoint.traffic_split) == {endpoint.deployed_models[0].id: 100}
    assert [d.deployed_model.service_account for d in vertex_emulator.calls("DeployModel")] == [
        "beer-serving@test-project.iam.gserviceaccount.com"
    ] * 2

    # Other eval photos: the champion's registry evaluation does not apply, so it is re-scored.
    changed = tmp_path / "changed-data"
    shutil.copytree(demo_data_dir, changed)
    photo = next((changed / "eval").rglob("*.jpg"))
    photo.write_bytes(photo.read_bytes() + b"\0")  # the same picture, other bytes
    again_retrained = upload_folder(emulated_gcs, demo_model_dir, f"{root}/run-4/train-model/model")
    fourth = run_gated_steps(again_retrained, changed, tmp_path / "run-4", "run-4")
    assert (
        "re-scored: its registry evaluation is of other eval photos"
        in (fourth["evaluation"].summary["champion"])
    )
    assert (
        fourth["evaluation"].summary["eval_fingerprint"]
        != (third["evaluation"].summary["eval_fingerprint"])
    )
    assert [r.parent for r in vertex_emulator.calls("ImportModelEvaluation")][2:] == [
        fourth["version"]
    ]
