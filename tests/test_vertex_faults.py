"""Faults of the Vertex AI service, injected in the emulator, met by the upload and deploy steps:
each ends in one clear message, and none leaves the endpoint worse than it was."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.cloud import aiplatform
from kfp import dsl

from components.images import PLACEHOLDERS
from components.lib.artifacts import VertexModel
from components.lib.targets.base import Serving
from components.lib.targets.vertex import VertexError
from components.upload import upload_model
from tests.conftest import (
    VERTEX_TARGET,
    deploy_step,
    evaluation_artifact,
    evaluation_summary,
    upload_folder,
)
from tests.serving_models import INSTANCES
from tests.vertex_emulator import VertexEmulator

pytestmark = pytest.mark.vertex_emulator

ENDPOINT = "beer-classifier-endpoint"


FIRST_MODEL_EVALUATION = evaluation_summary(
    champion_status="none",
    gate={"min_accuracy": 0.8, "max_regression": 0.0, "allow_class_change": False},
)
"""What the evaluate step hands the upload step when no champion serves."""


def upload_step(
    model_uri: str, tmp_path: Path, run: str = "run-1", serving_image: str = "prebuilt"
) -> str:
    """The pipeline's upload step, as a Vertex AI pipeline task runs it (served by Vertex AI's
    prebuilt TensorFlow image unless ``serving_image`` names another, e.g. the project's)."""
    return upload_model.python_func(
        model=dsl.Model(uri=model_uri),
        model_evaluation=evaluation_artifact(tmp_path / f"evaluation-{run}"),
        accuracy=0.95,
        champion_accuracy=-1.0,
        decision="accuracy 0.9500 >= required 0.8000: deploy",
        evaluation=FIRST_MODEL_EVALUATION,
        model_display_name="beer-classifier",
        pipeline_job=run,
        serving_image=serving_image,
        accelerator_type="",
        local_state_dir="",
        vertex_model=VertexModel(uri=str(tmp_path / f"model-{run}")),
        **VERTEX_TARGET,
    )


SERVING_ACCOUNT = "serving@test-project.iam.gserviceaccount.com"


@pytest.fixture(autouse=True)
def serving_account_user(vertex_emulator: VertexEmulator) -> None:
    """The deploy step's caller may run the model as the serving account (docs/vertex-iam.md)."""
    vertex_emulator.iam.grant_act_as(SERVING_ACCOUNT)


def deploy(version: str, tmp_path: Path) -> str:
    account = SERVING_ACCOUNT
    artifact = str(tmp_path / f"endpoint-{version[-1]}")
    return deploy_step(version, ENDPOINT, artifact, Serving(service_account=account))[0]


def served(emulator: VertexEmulator) -> dict[str, int]:
    """Version id -> traffic share of the endpoint."""
    [endpoint] = emulator.endpoints.values()
    versions = {d.id: d.model_version_id for d in endpoint.deployed_models}
    return {versions[i]: share for i, share in endpoint.traffic_split.items()}


def test_unavailable_first_calls_are_retried(
    vertex_emulator: VertexEmulator, stored: Callable[[str], str], tmp_path: Path
) -> None:
    for method in ("ListModels", "UploadModel", "ListEndpoints", "DeployModel"):
        vertex_emulator.fail(method, grpc.StatusCode.UNAVAILABLE)

    deploy(upload_step(stored("v1"), tmp_path), tmp_path)

    assert served(vertex_emulator) == {"1": 100}
    for method in ("UploadModel", "DeployModel"):
        assert len(vertex_emulator.calls(method)) == 2, f"{method}: refused once, then retried"


@pytest.mark.parametrize(
    ("serving_image", "broken", "reason"),
    [
        ("prebuilt", "broken", "Could not find variable"),  # TF Serving cannot run the export
        (PLACEHOLDERS.serving, "no-model", "Model server exited unexpectedly"),  # pipeline.serve
    ],
    ids=["prebuilt-tf-serving", "serving-image"],
)
def test_a_model_that_cannot_be_served_fails_the_run_and_the_old_version_keeps_serving(
    vertex_emulator: VertexEmulator,
    stored: Callable[[str], str],
    tmp_path: Path,
    serving_image: str,
    broken: str,
    reason: str,
) -> None:
    served_version = upload_step(stored("v1"), tmp_path, "run-1", serving_image)
    endpoint = deploy(served_version, tmp_path)
    unservable = upload_step(stored(broken), tmp_path, "run-2", serving_image)

    with pytest.raises(VertexError) as failed:
        deploy(unservable, tmp_path)

    message = str(failed.value)
    assert f"deploy {unservable}" in message
    assert reason in message, "the reason the model server gives"
    assert served(vertex_emulator) == {"1": 100}
    answer = aiplatform.Endpoint(endpoint).predict(instances=INSTANCES[:1])
    assert (answer.model_version_id, answer.predictions[0]["CLASSES"]) == ("1", 0)


def test_permission_denied_is_one_message_naming_the_role(
    vertex_emulator: VertexEmulator, stored: Callable[[str], str], tmp_path: Path
) -> None:
    version = upload_step(stored("v1"), tmp_path)
    vertex_emulator.fail("DeployModel", grpc.StatusCode.PERMISSION_DENIED)

    with pytest.raises(VertexError) as failed:
        deploy(version, tmp_path)

    message = str(failed.value)
    assert "\n" not in message
    assert "permission denied" in message and "roles/aiplatform.user" in message
    assert "'aiplatform.endpoints.deploy'" in message, "the service's words name the permission"
    assert len(vertex_emulator.calls("DeployModel")) == 1, "a refusal is not retried"


def test_an_upload_whose_answer_is_lost_registers_one_version(
    vertex_emulator: VertexEmulator, stored: Callable[[str], str], tmp_path: Path
) -> None:
    upload_step(stored("v1"), tmp_path, "run-1")
    vertex_emulator.fail_after("UploadModel", grpc.StatusCode.UNAVAILABLE)

    version = upload_step(stored("v2"), tmp_path, "run-2")

    assert version.endswith("@2")
    [model] = vertex_emulator.registry.models.values()
    assert [v.version_id for v in model.versions] == ["1", "2"], "no duplicate of version 2"


def test_an_operation_that_never_finishes_is_waited_for_a_bounded_time(
    vertex_emulator: VertexEmulator,
    stored: Callable[[str], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from components.lib.targets import vertex

    version = upload_step(stored("v1"), tmp_path)
    vertex_emulator.hold("DeployModel")
    monkeypatch.setattr(vertex, "DEPLOY_TIMEOUT_S", 3)

    started = time.monotonic()
    with pytest.raises(VertexError) as failed:
        deploy(version, tmp_path)

    assert time.monotonic() - started < 30
    message = str(failed.value)
    assert "not finished after 3 s" in message and "\n" not in message
    [held] = vertex_emulator.operations.pending()
    assert held in message, "the message names the operation to look up"


def test_the_train_steps_export_deploys_and_answers_on_the_prebuilt_tf_serving_image(
    vertex_emulator: VertexEmulator,
    emulated_gcs,
    backbone_model_dir: Path,
    tmp_path: Path,
) -> None:
    """What the train step exports (``export_serving_model``: the real backbone and head) is
    what Vertex AI's prebuilt TensorFlow image serves: the emulator loads it with TF Serving's
    session loader at deploy. Issue 11's fault, caught here: an export that tracks the Keras
    model instead of its variables fails this deploy with "Could not find variable"."""
    import tensorflow as tf

    uri = upload_folder(emulated_gcs, backbone_model_dir, f"{tmp_path.name}/export", "beer-models")
    endpoint = deploy(upload_step(uri, tmp_path), tmp_path)

    assert served(vertex_emulator) == {"1": 100}
    answer = aiplatform.Endpoint(endpoint).predict(instances=INSTANCES)
    images = [base64.b64decode(instance["bytes"]["b64"]) for instance in INSTANCES]
    local = tf.saved_model.load(str(backbone_model_dir)).signatures["serving_default"]
    expected = local(bytes=tf.constant(images))
    assert [p["CLASSES"] for p in answer.predictions] == expected["CLASSES"].numpy().tolist()
    served_probabilities = np.array([p["PROBABILITIES"] for p in answer.predictions])
    np.testing.assert_allclose(served_probabilities, expected["PROBABILITIES"].numpy(), atol=1e-5)
