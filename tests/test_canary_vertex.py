"""Canary review on Vertex AI (the emulator): the per-deployed-model prediction metrics come from
Cloud Monitoring's ListTimeSeries; a 5xx or slow canary is rolled back, a healthy one promoted,
and the decision is kept in the endpoint's labels and description."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from components.images import PLACEHOLDERS
from components.lib.monitoring.sampler import MONITORING_URI_ENV
from components.lib.serving.routing import MODEL_DISPLAY_NAME_ENV
from components.lib.targets import Serving, endpoint_registry, model_registry
from components.lib.targets.base import ModelVersion
from components.lib.targets.canary import MONITORING_API_ENV
from pipeline.canary import main
from tests.conftest import VERTEX_LOCATION, VERTEX_PROJECT, gcs_emulator_client, upload_folder
from tests.serving_models import INSTANCES, failing_model
from tests.vertex_emulator import VertexEmulator

pytestmark = [pytest.mark.vertex_emulator, pytest.mark.slow]
PREBUILT = "europe-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"
ENDPOINT = "beer-endpoint"


@pytest.fixture(scope="module")
def artifacts(
    gcs_emulator: str, colour_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    client = gcs_emulator_client(gcs_emulator)
    failing = failing_model(tmp_path_factory.mktemp("failing") / "model")
    return {
        "champion": upload_folder(client, colour_models["v1"], "champion/model", "bucket"),
        "healthy": upload_folder(client, colour_models["v2"], "healthy/model", "bucket"),
        "failing": upload_folder(client, failing, "failing/model", "bucket"),
    }


def _deploy(uri: str, share: int, image: str = PREBUILT) -> ModelVersion:
    registry = model_registry("vertex", "", VERTEX_PROJECT, VERTEX_LOCATION, image)
    version = registry.upload_version("beer", uri, {"accuracy": 0.9}, {})
    endpoints = endpoint_registry(
        "vertex", "", VERTEX_PROJECT, VERTEX_LOCATION, Serving(traffic_percentage=share)
    )
    endpoints.deploy(ENDPOINT, version)
    return version


@pytest.fixture
def endpoint(vertex_emulator: VertexEmulator, artifacts: dict, monkeypatch) -> VertexEmulator:
    monkeypatch.setenv(MONITORING_API_ENV, f"http://127.0.0.1:{vertex_emulator.rest_port}")
    _deploy(artifacts["champion"], 100)
    return vertex_emulator


def _send(emulator: VertexEmulator, count: int) -> list[int]:
    [name] = emulator.endpoints
    url = f"http://127.0.0.1:{emulator.rest_port}/v1/{name}:predict"
    return [
        requests.post(url, json={"instances": [INSTANCES[i % 3]]}, timeout=60).status_code
        for i in range(count)
    ]


def _review(capsys: pytest.CaptureFixture, *options: str) -> dict:
    arguments = ["--target", "vertex", "--project", VERTEX_PROJECT, "--location", VERTEX_LOCATION]
    status = main([*arguments, "--endpoint", ENDPOINT, "--min-requests", "8", "--json", *options])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return json.loads(captured.out.strip().splitlines()[-1])


def _served(emulator: VertexEmulator) -> tuple[dict, list[str], object]:
    [endpoint] = emulator.endpoints.values()
    return dict(endpoint.traffic_split), [d.id for d in endpoint.deployed_models], endpoint


def test_a_canary_that_answers_5xx_is_rolled_back(
    endpoint: VertexEmulator, artifacts: dict, capsys: pytest.CaptureFixture
) -> None:
    """The failing canary runs in the project's serving image, which the upload tells where
    to write its request samples and the model's name (the try-it page's title)."""
    canary = _deploy(artifacts["failing"], 50, PLACEHOLDERS.serving)
    env = {v.name: v.value for v in endpoint.calls("UploadModel")[-1].model.container_spec.env}
    assert env[MONITORING_URI_ENV] == "gs://bucket/failing/requests"
    assert env[MODEL_DISPLAY_NAME_ENV] == "beer"
    statuses = _send(endpoint, 30)
    assert 500 in statuses and 200 in statuses
    split, deployed, _ = _served(endpoint)
    [canary_id] = [d for d in deployed if split[d] == 50 and d != deployed[0]]

    decision = _review(capsys)
    assert decision["action"] == "rollback" and "server errors" in decision["reasons"][0]
    assert decision["canary"]["deployed_model_id"] == canary_id
    assert decision["canary"]["server_errors"] == statuses.count(500)
    split, deployed, stored = _served(endpoint)
    assert canary_id not in deployed and split == {deployed[0]: 100}
    assert stored.labels["canary-review"] == "rollback"
    assert stored.labels["canary-deployed-model"] == canary_id
    assert stored.description.startswith(f"rollback {canary_id}: ")
    assert canary.version_id == "2"


def test_a_slow_canary_is_rolled_back_and_a_healthy_one_promoted(
    endpoint: VertexEmulator, artifacts: dict, capsys: pytest.CaptureFixture
) -> None:
    _deploy(artifacts["healthy"], 50)
    _send(endpoint, 30)
    assert _review(capsys, "--dry-run")["action"] == "promote"
    slow = _review(capsys, "--max-latency-p95-ms", "0.001")
    assert slow["action"] == "rollback" and "over the budget" in slow["reasons"][0]
    split, deployed, _ = _served(endpoint)
    assert len(deployed) == 1 and split == {deployed[0]: 100}

    _deploy(artifacts["healthy"], 50)  # the same version again, a fresh deployment
    assert _review(capsys)["action"] == "wait"  # its own requests only: none yet
    _send(endpoint, 30)
    promoted = _review(capsys)
    assert promoted["action"] == "promote"
    split, deployed, stored = _served(endpoint)
    assert deployed == [promoted["canary"]["deployed_model_id"]] and split == {deployed[0]: 100}
    assert stored.labels["canary-review"] == "promote"


def test_list_time_series_is_as_strict_as_cloud_monitoring(endpoint: VertexEmulator) -> None:
    url = f"http://127.0.0.1:{endpoint.rest_port}/v3/projects/{VERTEX_PROJECT}/timeSeries"
    metric = 'metric.type="aiplatform.googleapis.com/prediction/online/prediction_count"'
    end = {"interval.endTime": "2100-01-01T00:00:00Z"}
    assert requests.get(url, params={"filter": metric}, timeout=10).status_code == 400
    unknown = {"filter": 'metric.type="aiplatform.googleapis.com/prediction/online/x"', **end}
    assert "Cannot find metric" in requests.get(url, params=unknown, timeout=10).text
    assert requests.get(url, params={"filter": "bad filter", **end}, timeout=10).status_code == 400
    other = url.replace(VERTEX_PROJECT, "someone-else")
    assert requests.get(other, params={"filter": metric, **end}, timeout=10).status_code == 403
    _send(endpoint, 3)
    start = {"interval.startTime": "2000-01-01T00:00:00Z"}
    [series] = requests.get(url, params={"filter": metric, **start, **end}, timeout=10).json()[
        "timeSeries"
    ]
    assert series["metricKind"] == "DELTA" and series["valueType"] == "INT64"
    assert sum(int(p["value"]["int64Value"]) for p in series["points"]) == 3
