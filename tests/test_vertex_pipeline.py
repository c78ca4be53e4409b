"""The compiled pipeline in Vertex mode, offline: kfp.local runs the steps, the Vertex AI emulator
registers, deploys and serves, the GCS emulator stores (the pipeline root reached through its
stand-in ``/gcs/`` mount, as on Vertex AI Pipelines). Three runs on the beer photos, then the
eval photos scored through the emulated endpoint in the challenge's request format.

1. first run: nothing served yet; the model passes the gate, is registered and deployed (the
   emulator runs the project's serving image on it, ``python -m pipeline.serve``);
2. more training photos: the champion is read back from its ``gs://`` artifact and scored on the
   same eval photos; the new model is deployed only by the rule;
3. unchanged photos: cached steps, and the model already registered and served is neither
   registered nor deployed again.

The exported model is also deployed on Vertex AI's prebuilt TensorFlow image, which loads it as
TF Serving does: an export that TF Serving cannot serve fails there.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from components.images import PLACEHOLDERS
from tests.conftest import (
    VERTEX_LOCATION,
    VERTEX_PROJECT,
    emulator_host,
    eval_photos,
    predict_in_batches,
    run_cli,
    running_vertex_emulator,
)
from tests.vertex_emulator import VertexEmulator
from tests.vertex_emulator.serving import image_name

pytestmark = [
    pytest.mark.vertex_emulator,
    # Where the images are built, this runs in the container tier, its endpoints on the built
    # serving image (IMAGE_CLASSIFIER_EMULATOR_SERVING_IMAGE).
    *([pytest.mark.container] if os.environ.get("IMAGE_CLASSIFIER_CONTAINER_TESTS") else []),
]

BUCKET = "image-classifier"
ENDPOINT = "beers-classifier-endpoint"
PIPELINE_ROOT = f"gs://{BUCKET}/root"
FIRST_SHARE = 0.7  # of each class's training photos in the first run; the second run has all
# Cheap training: head epochs on cached backbone features (0.1 s each), no fine-tuning, 160 px.
TRAINING = ["epochs=15", "fine_tune_epochs=0", "image_size=160"]


@pytest.fixture(scope="module")
def emulator(
    vertex_tls: tuple[Path, Path], gcs_emulator: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VertexEmulator]:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    mount_root = tmp_path_factory.mktemp("gcs-mount")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
        for name in ("PROJECT", "REGION", "PIPELINE_ROOT", "SERVICE_ACCOUNT", "EXPERIMENT"):
            monkeypatch.delenv(f"IMAGE_CLASSIFIER_{name}", raising=False)
        monkeypatch.setenv("IMAGE_CLASSIFIER_CONFIG", str(mount_root / "absent.yaml"))
        client = storage.Client(credentials=AnonymousCredentials(), project="test")
        if client.lookup_bucket(BUCKET) is None:
            client.create_bucket(BUCKET)
        (mount_root / BUCKET).mkdir()
        with running_vertex_emulator(vertex_tls, gcs_emulator, mount_root, monkeypatch) as running:
            emulator_host(running, monkeypatch)
            yield running


@pytest.fixture(scope="module")
def data(beer_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The beer photos with part of each class's training photos held back for later."""
    root = tmp_path_factory.mktemp("vertex-data") / "beers"
    shutil.copytree(beer_data_dir / "eval", root / "eval")
    for class_dir in sorted((beer_data_dir / "train").iterdir()):
        photos = sorted(class_dir.iterdir())
        (root / "train" / class_dir.name).mkdir(parents=True)
        for photo in photos[: int(len(photos) * FIRST_SHARE)]:
            shutil.copy(photo, root / "train" / class_dir.name / photo.name)
    return root


def run_pipeline(state: Path, data: Path) -> dict:
    result = run_cli(
        "--local",
        "--target",
        "vertex",
        "--project",
        VERTEX_PROJECT,
        "--region",
        VERTEX_LOCATION,
        "--pipeline-root",
        PIPELINE_ROOT,
        "--data-uri",
        str(data),
        "--state-dir",
        str(state),
        "--json",
        "--experiment",
        "beer-runs",
        *(part for assignment in TRAINING for part in ("--param", assignment)),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def counts(emulator: VertexEmulator) -> dict[str, int]:
    methods = ("UploadModel", "DeployModel", "UndeployModel")
    return {method: len(emulator.calls(method)) for method in methods}


def pipeline_endpoint(emulator: VertexEmulator):
    [endpoint] = [e for e in emulator.endpoints.values() if e.display_name == ENDPOINT]
    return endpoint


def served(emulator: VertexEmulator) -> dict[str, int]:
    """Version id -> traffic share on the pipeline's endpoint."""
    endpoint = pipeline_endpoint(emulator)
    versions = {d.id: d.model_version_id for d in endpoint.deployed_models}
    return {versions[i]: share for i, share in endpoint.traffic_split.items() if share}


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="module")
def first(emulator: VertexEmulator, state: Path, data: Path) -> dict:
    return {"summary": run_pipeline(state, data), "calls": counts(emulator)}


@pytest.fixture(scope="module")
def second(
    emulator: VertexEmulator, state: Path, data: Path, beer_data_dir: Path, first: dict
) -> dict:
    for class_dir in sorted((beer_data_dir / "train").iterdir()):
        for photo in class_dir.iterdir():
            shutil.copy(photo, data / "train" / class_dir.name / photo.name)
    return {"summary": run_pipeline(state, data), "calls": counts(emulator)}


@pytest.fixture(scope="module")
def third(emulator: VertexEmulator, state: Path, data: Path, second: dict) -> dict:
    return {"summary": run_pipeline(state, data), "calls": counts(emulator)}


def test_first_run_registers_and_deploys(emulator: VertexEmulator, first: dict) -> None:
    summary = first["summary"]
    assert summary["deployed"] is True and summary["champion_accuracy"] is None
    assert summary["accuracy"] >= 0.8
    number = emulator.project_number(VERTEX_PROJECT)
    assert summary["model_version"].startswith(f"projects/{number}/locations/{VERTEX_LOCATION}/")
    assert summary["model_version"].endswith("@1")
    [upload] = emulator.calls("UploadModel")
    assert upload.model.artifact_uri.startswith(f"{PIPELINE_ROOT}/")
    container = upload.model.container_spec
    assert image_name(container.image_uri) == image_name(PLACEHOLDERS.serving)
    assert (container.predict_route, container.health_route) == ("/predict", "/health")
    assert first["calls"] == {"UploadModel": 1, "DeployModel": 1, "UndeployModel": 0}
    # Recorded in Vertex AI Experiments: the run's parameters and final metrics.
    run = emulator.metadata.contexts[summary["experiment_run"]]
    assert run.schema_title == "system.ExperimentRun"
    assert run.metadata["_params"]["epochs"] == 15
    assert run.metadata["_metrics"]["accuracy"] == pytest.approx(summary["accuracy"])
    assert run.metadata["_state"] == "COMPLETE"


def test_second_run_compares_with_the_champion_from_cloud_storage(
    emulator: VertexEmulator, first: dict, second: dict
) -> None:
    before, after = first["summary"], second["summary"]
    assert after["champion_accuracy"] == pytest.approx(before["accuracy"]), (
        "the champion (version 1, read from gs://) scored on the same eval photos"
    )
    assert "read from its evaluation in the model registry (same eval photos" in after["champion"]
    [evaluated] = emulator.calls("ImportModelEvaluation")[:1]
    assert evaluated.parent == before["model_version"], "the first version carries its evaluation"
    should_deploy = after["accuracy"] >= after["champion_accuracy"]
    assert after["deployed"] is should_deploy, after["decision"]
    if should_deploy:
        assert second["calls"] == {"UploadModel": 2, "DeployModel": 2, "UndeployModel": 1}
        assert served(emulator) == {"2": 100}
    else:
        assert second["calls"] == first["calls"]
        assert served(emulator) == {"1": 100}


def test_third_run_on_unchanged_photos_neither_registers_nor_deploys(
    emulator: VertexEmulator, second: dict, third: dict
) -> None:
    summary = third["summary"]
    assert third["calls"] == second["calls"]
    assert set(summary["step_seconds"]) <= {
        "check-parameters",  # never cached: it checks every run's parameters in seconds
        "fingerprint-data",
        "evaluate-model",
        "infra-validate",  # follows evaluate, which scores against the live champion each run
        "upload-model",
        "deploy-model",
        "report-not-deployed",
    }, "download..train are cached on unchanged photos (their fingerprint says so)"
    before = second["summary"]
    assert summary["accuracy"] == pytest.approx(before["accuracy"]), "the same (cached) model"
    serving = before["accuracy"] if before["deployed"] else before["champion_accuracy"]
    assert summary["champion_accuracy"] == pytest.approx(serving), "what the endpoint serves"
    if before["deployed"]:  # the cached model is the served one: nothing to change
        assert "served already)" in summary["decision"], summary["decision"]
    else:
        assert summary["deployed"] is False


def test_the_endpoint_scores_the_eval_photos_in_the_challenge_format(
    emulator: VertexEmulator, beer_data_dir: Path, second: dict, third: dict
) -> None:
    endpoint = pipeline_endpoint(emulator).name
    url = f"http://127.0.0.1:{emulator.rest_port}/v1/{endpoint}:predict"
    photos = eval_photos(beer_data_dir)
    classes = {label for _, label in photos}
    correct, versions = 0, set()
    for body, batch in predict_in_batches(url, photos):
        versions.add(body["modelVersionId"])
        for prediction, (_, label) in zip(body["predictions"], batch, strict=True):
            assert len(prediction["PROBABILITIES"]) == len(classes)
            correct += prediction["CLASSES"] == label
    [version] = versions
    assert served(emulator) == {version: 100}
    expected = (
        second["summary"]["accuracy"] if version == "2" else second["summary"]["champion_accuracy"]
    )
    assert correct / len(photos) == pytest.approx(expected, abs=1e-6)


def test_the_exported_model_also_serves_on_the_prebuilt_tensorflow_image(
    emulator: VertexEmulator, beer_data_dir: Path, first: dict
) -> None:
    """Vertex AI's prebuilt TF image loads the model with TF Serving's session loader, which
    the project's export must survive (``serving_image=prebuilt``): same answers as in-process."""
    from components.lib.serving.prediction import ServingModel
    from components.lib.storage import mounted_path
    from components.lib.targets import endpoint_registry, model_registry

    artifact = emulator.calls("UploadModel")[0].model.artifact_uri
    registry = model_registry("vertex", "", VERTEX_PROJECT, VERTEX_LOCATION, "prebuilt")
    version = registry.upload_version("beer-prebuilt", artifact, {}, {})
    endpoints = endpoint_registry("vertex", "", VERTEX_PROJECT, VERTEX_LOCATION)
    endpoint = endpoints.deploy("beer-prebuilt-endpoint", version)["name"]

    classes = sorted((beer_data_dir / "eval").iterdir())
    photos = [sorted(folder.iterdir())[0].read_bytes() for folder in classes]
    url = f"http://127.0.0.1:{emulator.rest_port}/v1/{endpoint}:predict"
    instances = [{"bytes": {"b64": base64.b64encode(photo).decode()}} for photo in photos]
    body = requests.post(url, json={"instances": instances}, timeout=120).json()
    expected = ServingModel(mounted_path(artifact)).predict(photos)
    served_probabilities = [p["PROBABILITIES"] for p in body["predictions"]]
    np.testing.assert_allclose(served_probabilities, expected.probabilities, atol=1e-5)
    assert [p["CLASSES"] for p in body["predictions"]] == expected.classes.tolist()
