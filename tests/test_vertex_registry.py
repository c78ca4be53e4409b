"""The Vertex target of upload and deploy, on the wire: the real SDK against the Vertex AI
emulator, every artifact a small real model in the GCS emulator."""

from __future__ import annotations

import grpc
import pytest
from google.cloud import aiplatform_v1 as v1

from components.images import PLACEHOLDERS
from components.lib.targets import Serving, champion_version, endpoint_registry, model_registry
from components.lib.targets.base import ModelVersion, version_alias
from components.lib.targets.vertex import VertexError, label_value, prediction_image
from tests.conftest import (
    VERTEX_LOCATION,
    VERTEX_PROJECT,
    VERTEX_TARGET,
    deploy_step,
    evaluation_artifact,
    evaluation_summary,
    gcs_emulator_client,
    upload_folder,
)
from tests.vertex_emulator import VertexEmulator

IMAGE = "europe-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"
DEFAULT_SERVING = Serving()
PARENT = f"projects/{VERTEX_PROJECT}/locations/{VERTEX_LOCATION}"
RUNS = ("run-a", "run-b", "run-c")
ARTIFACTS = ("a/model", "b/model", "root/train-model/model", *(f"{r}/train/model" for r in RUNS))


@pytest.fixture(scope="module", autouse=True)
def artifacts(gcs_emulator: str, colour_models: dict) -> None:
    """Every ``gs://bucket/...`` artifact these tests register holds a small real model."""
    client = gcs_emulator_client(gcs_emulator)
    for prefix in ARTIFACTS:
        upload_folder(client, colour_models["v1"], prefix, "bucket")


def upload(run: str, uri: str = "") -> ModelVersion:
    """Register the model a pipeline run trained (at ``uri``; by default one per run)."""
    uri = uri or f"gs://bucket/{run}/train/model"
    registry = model_registry("vertex", "", VERTEX_PROJECT, VERTEX_LOCATION, IMAGE)
    return registry.upload_version(
        "Beer Classifier",
        uri,
        {"accuracy": 0.9691},
        {"pipeline_job": run, "accuracy": "0.9691"},
        aliases=[version_alias(run)],
    )


def deploy(version: ModelVersion, serving: Serving = DEFAULT_SERVING) -> dict:
    endpoints = endpoint_registry("vertex", "", VERTEX_PROJECT, VERTEX_LOCATION, serving)
    return endpoints.deploy("beer-endpoint", version)


def test_prebuilt_image_matches_region_and_tensorflow_version() -> None:
    assert prediction_image("europe-west4", "2.15.1") == IMAGE
    assert prediction_image("us-central1", "2.12.0", gpu=True) == (
        "us-docker.pkg.dev/vertex-ai/prediction/tf2-gpu.2-12:latest"
    )
    assert prediction_image("australia-southeast1", "2.13.0").startswith("asia-docker.pkg.dev/")
    newest_known = prediction_image("europe-west1", "2.99.0")
    assert newest_known.startswith("europe-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-")
    with pytest.raises(VertexError, match="set the pipeline parameter serving_image"):
        prediction_image("europe-west1", "0.9")


def test_serving_image_keyword_picks_the_prebuilt_image(vertex_emulator: VertexEmulator) -> None:
    registry = model_registry("vertex", "", VERTEX_PROJECT, VERTEX_LOCATION, "prebuilt", gpu=True)
    registry.upload_version("beer", "gs://bucket/a/model", {"accuracy": 0.9}, {})
    [request] = vertex_emulator.calls("UploadModel")
    container = request.model.container_spec
    assert container.image_uri.startswith("europe-docker.pkg.dev/vertex-ai/prediction/tf2-gpu.2-")
    assert (container.predict_route, container.health_route, list(container.ports)) == ("", "", [])


def test_labels_and_aliases_follow_vertex_rules() -> None:
    assert label_value("0.9691") == "0-9691"
    assert label_value("Image-Classifier-Training-20261121" + "x" * 60) == (
        "image-classifier-training-20261121" + "x" * 29
    )
    assert version_alias("image-classifier-training-20261121060000") == (
        "image-classifier-training-20261121060000"
    )
    assert version_alias("20261121_run") == "run-20261121-run"


def test_first_upload_creates_the_model_then_versions_it(vertex_emulator: VertexEmulator) -> None:
    first = upload("run-a", "gs://bucket/a/model")
    second = upload("run-b", "gs://bucket/b/model")

    requests = vertex_emulator.calls("UploadModel")
    assert [r.parent for r in requests] == [PARENT, PARENT]
    assert requests[0].parent_model == ""
    assert requests[1].parent_model == first.model
    sent = requests[1].model
    assert sent.display_name == "Beer Classifier"
    assert sent.artifact_uri == "gs://bucket/b/model"
    assert sent.container_spec.image_uri == IMAGE
    assert sorted(sent.version_aliases) == ["default", "run-b"]
    assert dict(sent.labels) == {"pipeline_job": "run-b", "accuracy": "0-9691"}
    assert (second.model, second.version_id) == (first.model, "2")
    assert second.resource_name == f"{first.model}@2"
    lookups = vertex_emulator.calls("ListModels")
    assert [r.filter for r in lookups] == ['display_name="Beer Classifier"'] * 2


def test_upload_refuses_an_artifact_outside_cloud_storage(vertex_emulator: VertexEmulator) -> None:
    with pytest.raises(VertexError, match="pipeline root must be a gs:// folder"):
        upload("run-a", "/tmp/model")
    assert vertex_emulator.requests == []


def test_deploy_creates_the_endpoint_once_and_retires_the_old_version(
    vertex_emulator: VertexEmulator,
) -> None:
    serving = Serving(
        machine_type="n1-standard-4",
        min_replicas=1,
        max_replicas=3,
        accelerator_type="NVIDIA_TESLA_T4",
        accelerator_count=1,
    )
    first = deploy(upload("run-a"), serving)
    second = deploy(upload("run-b"), serving)

    assert len(vertex_emulator.calls("CreateEndpoint")) == 1
    assert vertex_emulator.calls("CreateEndpoint")[0].endpoint.display_name == "beer-endpoint"
    assert first["name"] == second["name"]
    deploys = vertex_emulator.calls("DeployModel")
    assert len(deploys) == 2
    resources = deploys[1].deployed_model.dedicated_resources
    assert resources.machine_spec.machine_type == "n1-standard-4"
    assert resources.machine_spec.accelerator_type == v1.AcceleratorType.NVIDIA_TESLA_T4
    assert resources.machine_spec.accelerator_count == 1
    assert (resources.min_replica_count, resources.max_replica_count) == (1, 3)
    assert deploys[1].deployed_model.model.endswith("@2")
    first_id = first["deployedModels"][0]["id"]
    assert dict(deploys[1].traffic_split) == {"0": 100}
    undeploys = vertex_emulator.calls("UndeployModel")
    assert [u.deployed_model_id for u in undeploys] == [first_id]
    assert [(d["modelVersionId"]) for d in second["deployedModels"]] == ["2"]
    assert second["trafficSplit"] == {second["deployedModels"][0]["id"]: 100}


def test_canary_share_keeps_the_old_version_serving(vertex_emulator: VertexEmulator) -> None:
    first = deploy(upload("run-a"))
    canary = deploy(upload("run-b"), Serving(traffic_percentage=10))

    old_id = first["deployedModels"][0]["id"]
    new_id = next(d["id"] for d in canary["deployedModels"] if d["modelVersionId"] == "2")
    assert canary["trafficSplit"] == {old_id: 90, new_id: 10}
    assert vertex_emulator.calls("UndeployModel") == []


def test_failed_deploy_leaves_the_old_version_with_all_traffic(
    vertex_emulator: VertexEmulator,
) -> None:
    first = deploy(upload("run-a"))
    version = upload("run-b")
    vertex_emulator.fail("DeployModel", grpc.StatusCode.RESOURCE_EXHAUSTED)

    with pytest.raises(VertexError, match=r"deploy .*@2 to .*RESOURCE_EXHAUSTED"):
        deploy(version)
    assert vertex_emulator.calls("UndeployModel") == []
    endpoint = next(iter(vertex_emulator.endpoints.values()))
    assert dict(endpoint.traffic_split) == first["trafficSplit"]


def test_permission_denied_is_reported_with_the_missing_role(
    vertex_emulator: VertexEmulator,
) -> None:
    vertex_emulator.fail("ListModels", grpc.StatusCode.PERMISSION_DENIED)
    with pytest.raises(VertexError) as caught:
        upload("run-a")
    message = str(caught.value)
    assert "list models named 'Beer Classifier': permission denied" in message
    assert "roles/aiplatform.user" in message
    assert vertex_emulator.calls("UploadModel") == []


def test_unavailable_is_retried_a_bounded_number_of_times(vertex_emulator: VertexEmulator) -> None:
    vertex_emulator.fail("UploadModel", *[grpc.StatusCode.UNAVAILABLE] * 2)
    version = upload("run-a")
    assert version.version_id == "1"
    assert len(vertex_emulator.calls("UploadModel")) == 3

    vertex_emulator.fail("ListEndpoints", *[grpc.StatusCode.UNAVAILABLE] * 10)
    with pytest.raises(VertexError, match="stayed unavailable after 4 attempts"):
        deploy(version)
    assert len(vertex_emulator.calls("ListEndpoints")) == 4
    assert vertex_emulator.calls("CreateEndpoint") == []


def test_serving_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="min_replicas"):
        Serving(min_replicas=2, max_replicas=1)
    with pytest.raises(ValueError, match=r"traffic_percentage must be 1\.\.100"):
        Serving(traffic_percentage=0)
    with pytest.raises(ValueError, match="serving_accelerator_count 0: set both"):
        Serving(accelerator_type="NVIDIA_TESLA_T4")


def test_steps_output_vertex_artifacts_for_lineage(
    vertex_emulator: VertexEmulator, tmp_path
) -> None:
    from kfp import dsl

    from components.lib.artifacts import VertexModel
    from components.upload import upload_model

    vertex_model = VertexModel(uri=str(tmp_path / "model-artifact"))
    version = upload_model.python_func(
        model=dsl.Model(uri="gs://bucket/root/train-model/model"),
        model_evaluation=evaluation_artifact(tmp_path / "evaluation"),
        accuracy=0.95,
        champion_accuracy=0.93,
        decision="accuracy 0.9500 >= required 0.8000; vs champion 0.9300: deploy",
        evaluation=evaluation_summary(
            champion_status="compared",
            paired_test={"p_value": 0.25},
            gate={"min_accuracy": 0.8, "max_regression": 0.01, "allow_class_change": False},
        ),
        model_display_name="beer",
        pipeline_job="image-classifier-training-20261121",
        serving_image=PLACEHOLDERS.serving,
        accelerator_type="NVIDIA_TESLA_T4",
        local_state_dir="",
        vertex_model=vertex_model,
        **VERTEX_TARGET,
    )
    [request] = vertex_emulator.calls("UploadModel")
    container = request.model.container_spec
    assert container.image_uri == PLACEHOLDERS.serving
    assert (container.predict_route, container.health_route) == ("/predict", "/health")
    assert [port.container_port for port in container.ports] == [8080]
    assert "image-classifier-training-20261121" in request.model.version_aliases
    assert request.model.labels["champion_accuracy"] == "0-9300"
    assert {key: request.model.labels[key] for key in request.model.labels if "gate" in key} == {
        "gate_min_accuracy": "0-8000",
        "gate_max_regression": "0-0100",
        "gate_allow_class_change": "false",
        "gate_test": "mcnemar-exact",
        "gate_max_latency_p95_ms": "1000",
        "gate_max_model_size_mb": "100",
        "gate_max_load_seconds": "300",
    }
    assert request.model.labels["mcnemar_p"] == "0-2500"
    assert request.model.labels["champion_status"] == "compared"
    assert request.model.version_description.startswith(
        "accuracy 0.9500 >= required 0.8000; vs champion 0.9300: deploy. Rule: deploy when "
        "accuracy >= 0.8000 and"
    )
    assert vertex_model.metadata == {"resourceName": version}
    assert vertex_model.uri == f"https://{VERTEX_LOCATION}-aiplatform.googleapis.com/v1/{version}"

    # Deployed: a version served in the prebuilt image (the project's serving image would be a
    # server process of its own; tests/test_vertex_steps.py deploys that one).
    prebuilt = upload("run-a").resource_name
    gpu = Serving("n1-standard-4", 1, 2, "NVIDIA_TESLA_T4", 1)
    endpoint, vertex_endpoint = deploy_step(
        prebuilt, "beer-endpoint", str(tmp_path / "endpoint-artifact"), gpu
    )
    assert endpoint == vertex_emulator.calls("DeployModel")[0].endpoint
    assert vertex_endpoint.metadata == {"resourceName": endpoint}
    assert vertex_endpoint.uri.endswith(f"/v1/{endpoint}")


def test_champion_is_the_version_with_most_traffic(vertex_emulator: VertexEmulator) -> None:
    args = ("vertex", "", VERTEX_PROJECT, VERTEX_LOCATION, "beer-endpoint")
    assert champion_version(*args) is None, "no endpoint yet: no champion"
    deploy(upload("run-a", "gs://bucket/a/model"))
    second = upload("run-b", "gs://bucket/b/model")
    deploy(second, Serving(traffic_percentage=30))

    assert champion_version(*args).artifact_uri == "gs://bucket/a/model"
    deploy(second)
    champion = champion_version(*args)
    assert (champion.artifact_uri, champion.source_uri) == ("gs://bucket/b/model",) * 2
    assert champion.resource_name == second.resource_name


def test_deploy_runs_the_model_as_the_configured_service_account(
    vertex_emulator: VertexEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    account = "beer-serving@test-project.iam.gserviceaccount.com"
    vertex_emulator.iam.grant_act_as(account)
    deploy(upload("run-a"), Serving(service_account=account))
    [request] = vertex_emulator.calls("DeployModel")
    assert request.deployed_model.service_account == account
    assert "default service account" not in caplog.text

    deploy(upload("run-b", "gs://bucket/b/model"))
    assert vertex_emulator.calls("DeployModel")[1].deployed_model.service_account == ""
    assert "serving_service_account is not set" in caplog.text


def test_an_artifact_already_registered_is_not_uploaded_again(
    vertex_emulator: VertexEmulator,
) -> None:
    first = upload("run-a", "gs://bucket/a/model")
    again = upload("run-b", "gs://bucket/a/model/")

    assert again == first
    assert len(vertex_emulator.calls("UploadModel")) == 1
    [model] = vertex_emulator.registry.models.values()
    assert len(model.versions) == 1


def test_an_upload_whose_answer_was_lost_is_not_repeated(vertex_emulator: VertexEmulator) -> None:
    upload("run-a", "gs://bucket/a/model")
    vertex_emulator.fail_after("UploadModel", grpc.StatusCode.UNAVAILABLE)

    version = upload("run-b", "gs://bucket/b/model")

    assert version.version_id == "2"
    assert len(vertex_emulator.calls("UploadModel")) == 2, "one upload each, no retry of the second"
    [model] = vertex_emulator.registry.models.values()
    assert [v.artifact_uri for v in model.versions] == [
        "gs://bucket/a/model",
        "gs://bucket/b/model",
    ]


def test_canary_at_10_then_a_run_at_100_retires_the_canary(vertex_emulator: VertexEmulator) -> None:
    first = deploy(upload("run-a"))
    canary = deploy(upload("run-b"), Serving(traffic_percentage=10))
    ids = {d["modelVersionId"]: d["id"] for d in canary["deployedModels"]}
    assert canary["trafficSplit"] == {ids["1"]: 90, ids["2"]: 10}
    assert dict(vertex_emulator.calls("DeployModel")[1].traffic_split) == {"0": 10, ids["1"]: 90}

    # The next canary replaces the last one; the version serving 90% keeps serving.
    third = upload("run-c")
    second_canary = deploy(third, Serving(traffic_percentage=10))
    ids = {d["modelVersionId"]: d["id"] for d in second_canary["deployedModels"]}
    assert set(ids) == {"1", "3"}
    assert second_canary["trafficSplit"] == {ids["1"]: 90, ids["3"]: 10}
    assert [u.deployed_model_id for u in vertex_emulator.calls("UndeployModel")] == [
        d["id"] for d in canary["deployedModels"] if d["modelVersionId"] == "2"
    ]

    # A run at 100% with the canary's model (its training cached) promotes it, no redeploy.
    promoted = deploy(third)
    assert promoted["changed"] is True
    assert [d["modelVersionId"] for d in promoted["deployedModels"]] == ["3"]
    assert promoted["trafficSplit"] == {ids["3"]: 100}
    assert len(vertex_emulator.calls("DeployModel")) == 3
    [update] = vertex_emulator.calls("UpdateEndpoint")
    assert dict(update.endpoint.traffic_split) == {ids["3"]: 100}
    assert (
        vertex_emulator.calls("UndeployModel")[-1].deployed_model_id
        == (first["deployedModels"][0]["id"])
    )

    # The same run again changes nothing and calls nothing that changes the endpoint.
    calls = len(vertex_emulator.requests)
    assert deploy(third)["changed"] is False
    changing = {"DeployModel", "UpdateEndpoint", "UndeployModel", "CreateEndpoint"}
    assert not changing & set(vertex_emulator.methods()[calls:])


def test_two_endpoints_with_one_name_are_an_error_naming_both(
    vertex_emulator: VertexEmulator,
) -> None:
    from google.cloud import aiplatform

    for _ in range(2):
        aiplatform.Endpoint.create(display_name="beer-endpoint")
    with pytest.raises(VertexError) as caught:
        deploy(upload("run-a"))
    message = str(caught.value)
    for name in vertex_emulator.endpoints:
        assert name in message
    assert "2 endpoints in test-project/europe-west4 are named 'beer-endpoint'" in message
    assert vertex_emulator.calls("DeployModel") == []


def test_a_deploy_that_does_not_finish_fails_after_the_timeout(
    vertex_emulator: VertexEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from components.lib.targets import vertex

    monkeypatch.setattr(vertex, "DEPLOY_TIMEOUT_S", 1.5)
    version = upload("run-a")
    vertex_emulator.hold("DeployModel")
    with pytest.raises(VertexError, match=r"deploy .*@1 to .*: not finished after 2 s"):
        deploy(version)
    assert vertex_emulator.calls("GetOperation"), "the operation was polled until the timeout"


def test_an_address_that_does_not_resolve_fails_at_once(
    vertex_emulator: VertexEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside a step (upload, deploy), where no preflight ran: DNS is not "try again later"."""
    import time

    from google.cloud.aiplatform import initializer

    monkeypatch.setattr(initializer.global_config, "_api_endpoint", "vertex-api.invalid:443")
    started = time.monotonic()
    with pytest.raises(VertexError, match=r"cannot reach Vertex AI: its address does not resolve"):
        upload("run-a")
    assert time.monotonic() - started < 10
    assert vertex_emulator.requests == []


def test_a_version_keeps_its_edge_models_under_its_artifact_uri(
    vertex_emulator: VertexEmulator, gcs_emulator: str, colour_models: dict, tmp_path
) -> None:
    """The TFLite files sit in the model artifact's tflite/ folder, and the version's artifact
    URI is that artifact: the registered version holds them (read back here from the GCS
    emulator through the storage seam); a label per model holds its eval accuracy. The
    registry never reads the files, so stand-in bytes do here."""
    import json
    import shutil

    from kfp import dsl

    from components.lib.artifacts import VertexModel
    from components.lib.modelling.edge import read_edge_models
    from components.lib.storage import local_copy
    from components.upload import upload_model

    artifact = tmp_path / "model"
    shutil.copytree(colour_models["v1"], artifact)
    (artifact / "tflite").mkdir()
    manifest = [
        {"kind": kind, "file": f"tflite/{kind}.tflite", "size_bytes": size, "image_size": 8}
        for kind, size in (("float16", 64), ("int8", 32))
    ]
    for entry in manifest:
        (artifact / entry["file"]).write_bytes(b"\0" * entry["size_bytes"])
    (artifact / "tflite" / "tflite.json").write_text(json.dumps(manifest))
    model_uri = upload_folder(gcs_emulator_client(gcs_emulator), artifact, "edge/model", "bucket")
    upload_model.python_func(
        model=dsl.Model(uri=model_uri),
        model_evaluation=evaluation_artifact(tmp_path / "evaluation"),
        accuracy=0.9691,
        champion_accuracy=-1.0,
        decision="accuracy 0.9691 >= required 0.8000, no champion serving: deploy",
        evaluation=evaluation_summary(
            champion_status="none",
            gate={"min_accuracy": 0.8, "max_regression": 0.0, "allow_class_change": False},
            tflite=[{**manifest[0], "accuracy": 0.9691}, {**manifest[1], "accuracy": 0.9588}],
        ),
        model_display_name="beer-edge",
        pipeline_job="image-classifier-training-20261122",
        serving_image=PLACEHOLDERS.serving,
        accelerator_type="",
        local_state_dir="",
        vertex_model=VertexModel(uri=str(tmp_path / "model-artifact")),
        **VERTEX_TARGET,
    )

    uploads = vertex_emulator.calls("UploadModel")
    [request] = [call for call in uploads if call.model.artifact_uri == model_uri]
    assert request.model.labels["tflite_float16_accuracy"] == "0-9691"
    assert request.model.labels["tflite_int8_accuracy"] == "0-9588"
    registry = model_registry("vertex", "", VERTEX_PROJECT, VERTEX_LOCATION, IMAGE)
    version = registry.find_version("beer-edge", model_uri)
    kept = local_copy(version.artifact_uri, str(tmp_path / "copy"))
    assert [model.size_bytes for model in read_edge_models(kept)] == [64, 32]
