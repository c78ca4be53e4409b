"""The serving container's contract (Vertex AI custom container): ``python -m pipeline.serve``
with the ``AIP_*`` variables serves the model in ``AIP_STORAGE_URI`` (here a bucket of the GCS
emulator, read through gcsfs), answers the challenge's test.json, and needs no training code."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from bench.serve_load import ServerProcess, server_process
from components.lib.serving.routing import MODEL_DISPLAY_NAME_ENV
from tests.conftest import ROOT, upload_folder
from tests.vertex_emulator.storage import free_port

pytestmark = pytest.mark.slow

PREDICT_ROUTE = "/v1/endpoints/123/deployedModels/456:predict"
HEALTH_ROUTE = "/v1/endpoints/123/deployedModels/456"
# What the serving image leaves out: importing any of them fails in the server's process.
TRAINING_MODULES = (
    "kfp",
    "google.cloud.aiplatform",
    "google_cloud_pipeline_components",
    "components.lib.modelling",
    "components.lib.evaluation",
    "matplotlib",
    "skimage",
    "pipeline.run",
)
SERVE_WITHOUT_TRAINING = (
    f"import sys\nfor name in {TRAINING_MODULES!r}:\n    sys.modules[name] = None\n"
    "from pipeline.serve import main\nsys.exit(main())"
)


@pytest.fixture(scope="module")
def model_uri(gcs_emulator: str, demo_model_dir: Path) -> str:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
        client = storage.Client(credentials=AnonymousCredentials(), project="test")
        return upload_folder(client, demo_model_dir, "models/demo")


def container_env(gcs_emulator: str, storage_uri: str) -> dict[str, str]:
    """What Vertex AI sets in a serving container, plus the way to the emulator."""
    return {
        **os.environ,
        "AIP_STORAGE_URI": storage_uri,
        "AIP_HTTP_PORT": str(free_port()),
        "AIP_PREDICT_ROUTE": PREDICT_ROUTE,
        "AIP_HEALTH_ROUTE": HEALTH_ROUTE,
        "AIP_DEPLOYED_MODEL_ID": "456",
        MODEL_DISPLAY_NAME_ENV: "mugs-classifier",  # set by the upload (targets/vertex.py)
        "STORAGE_EMULATOR_HOST": gcs_emulator,
        "FSSPEC_GS_TOKEN": "anon",
    }


@pytest.fixture(scope="module")
def container(
    gcs_emulator: str, model_uri: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, list[int]]]:
    """The server, and the health statuses it answered from its start until it was ready."""
    log = tmp_path_factory.mktemp("container") / "serve.log"
    command = [sys.executable, "-c", SERVE_WITHOUT_TRAINING]
    with server_process(command, log, env=container_env(gcs_emulator, model_uri)) as server:
        statuses, deadline = [], time.monotonic() + 300
        while not statuses or statuses[-1] != 200:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            statuses.append(requests.get(server.url + HEALTH_ROUTE, timeout=30).status_code)
            time.sleep(0.2)
        yield server, statuses


def test_listens_on_all_interfaces_at_aip_http_port(container) -> None:
    server, _ = container
    assert server.announced.split()[-4].startswith("http://0.0.0.0:")
    assert (
        server.process.stdout.readline().strip()
        == f"predict: POST {server.url.replace('127.0.0.1', '0.0.0.0')}{PREDICT_ROUTE}"
    )


def test_health_is_503_until_the_model_has_loaded(container) -> None:
    _, statuses = container
    assert statuses[0] == 503 and statuses[-1] == 200
    assert set(statuses) == {503, 200}


def test_answers_the_challenge_test_json(
    container, demo_data_dir: Path, demo_model_dir: Path
) -> None:
    server, _ = container
    from components.lib.serving.prediction import model_fingerprint

    photos = [demo_data_dir / f"eval/{name}/002.jpg" for name in ("2coffee", "0astronaut")]
    test_json = {
        "instances": [{"bytes": {"b64": base64.b64encode(p.read_bytes()).decode()}} for p in photos]
    }

    response = requests.post(server.url + PREDICT_ROUTE, json=test_json, timeout=60)

    assert response.status_code == 200, response.text
    answer = response.json()
    assert [p["CLASSES"] for p in answer["predictions"]] == [2, 0]
    assert all(len(p["PROBABILITIES"]) == 4 for p in answer["predictions"])
    assert answer["deployedModelId"] == "456"
    assert "model" not in answer  # not known inside a container: Vertex AI adds it
    fingerprint = model_fingerprint(str(demo_model_dir))
    assert response.headers["X-Model-Version"] == f"sha256:{fingerprint}"


def test_the_page_is_titled_by_the_registered_model(container) -> None:
    server, _ = container
    listed = requests.get(server.url + "/models", timeout=30).json()["models"]
    assert [(m["name"], m["displayName"]) for m in listed] == [("model", "mugs-classifier")]


def test_only_the_aip_routes_predict(container) -> None:
    server, _ = container
    local_path = "/v1/projects/p/locations/l/endpoints/e:predict"
    assert requests.post(server.url + local_path, data=b"{}", timeout=30).status_code == 404
    bad = requests.post(server.url + PREDICT_ROUTE, json={"instances": 1}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == 400


def test_a_model_that_cannot_load_stops_the_server(
    gcs_emulator: str, model_uri: str, tmp_path: Path
) -> None:
    env = container_env(gcs_emulator, model_uri.rsplit("/", 1)[0] + "/missing")
    result = subprocess.run(
        [sys.executable, "-c", SERVE_WITHOUT_TRAINING],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    errors = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any(
        line["severity"] == "ERROR" and "cannot be loaded" in line["message"] for line in errors
    )
