"""The container tier: the images built from docker/ (``.ci/images.sh``), used as Vertex AI uses
them.

1. The whole local pipeline on the beer photos, every step in its role's image (light, CPU,
   GPU) as the images' non-root user, through kfp.local's DockerRunner and podman's
   Docker-compatible service; the run deploys.
2. The serving image, started with Vertex AI's ``AIP_*`` variables on the model that run
   trained, read from the GCS emulator (``gs://``): health answers 503 while the model loads,
   then 200; the eval photos get their classes in the challenge's format; a malformed request
   gets 400; the server runs as a non-root user.

The Vertex AI emulator's endpoints run the built serving image too in this tier
(``IMAGE_CLASSIFIER_EMULATOR_SERVING_IMAGE``: tests/test_vertex_pipeline.py).

Runs where the images are built (``IMAGE_CLASSIFIER_CONTAINER_TESTS=1``, set by .ci/run);
elsewhere it is skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from components.images import Role
from pipeline.local_runner import LOCAL_IMAGES, STEP_LABEL
from tests.conftest import eval_photos, gcs_emulator_client, predict_in_batches, upload_folder
from tests.vertex_emulator.storage import free_port

pytestmark = [
    pytest.mark.container,
    pytest.mark.skipif(
        not os.environ.get("IMAGE_CLASSIFIER_CONTAINER_TESTS"),
        reason="the container tier runs where .ci/images.sh built the images "
        "(IMAGE_CLASSIFIER_CONTAINER_TESTS=1)",
    ),
]

IMAGE_USER = 1000
# Cheap training, as the Vertex emulator's scenario: head epochs on cached features, 160 px.
TRAINING = ["epochs=15", "fine_tune_epochs=0", "image_size=160"]
PREDICT_ROUTE = "/v1/endpoints/1/deployedModels/2:predict"
HEALTH_ROUTE = "/v1/endpoints/1/deployedModels/2"


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check)


@pytest.fixture(scope="module")
def docker_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """podman's Docker-compatible API on a socket of this module (kfp.local's DockerRunner
    talks to it through the Docker SDK)."""
    for role in Role:
        image = LOCAL_IMAGES.for_role(role)
        assert podman("image", "exists", image, check=False).returncode == 0, (
            f"{image} is not built: bash .ci/images.sh"
        )
    socket = tmp_path_factory.mktemp("podman") / "podman.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not socket.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert socket.exists(), "podman system service did not start"
    yield f"unix://{socket}"
    service.terminate()
    service.wait(timeout=30)


@pytest.fixture(scope="module")
def shared_dir() -> Iterator[Path]:
    """A folder the images' user can reach (pytest's own are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="image-classifier-containers-", dir="/var/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def container_run(docker_host: str, shared_dir: Path, beer_data_dir: Path) -> dict:
    """One local run on the beer photos with every step in its image; its summary, the
    images its containers ran and its state folder."""
    state_dir = shared_dir / "state"
    state_dir.mkdir()
    os.chown(state_dir, IMAGE_USER, IMAGE_USER)
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    params = [word for setting in TRAINING for word in ("--param", setting)]
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pipeline.run", "--local", "--runner", "docker"),
            *("--data-uri", str(beer_data_dir), "--state-dir", str(state_dir), "--json"),
            *params,
        ],
        env={**os.environ, "DOCKER_HOST": docker_host},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    events = podman(
        "events", "--stream=false", "--since", since, "--filter", "event=create",
        "--format", "{{.Image}} {{.Attributes}}",
    ).stdout.splitlines()  # fmt: skip
    # The steps' containers, by their label (the emulator's serving containers have none).
    created = [event.split()[0] for event in events if f"{STEP_LABEL}:" in event]
    return {
        "summary": json.loads(result.stdout.strip().splitlines()[-1]),
        "images": created,
        "state_dir": state_dir,
    }


def test_every_step_runs_in_its_image_and_the_run_deploys(container_run: dict) -> None:
    summary = container_run["summary"]
    assert summary["deployed"] is True, summary["decision"]
    assert summary["accuracy"] >= 0.8
    # One container per step that ran, each in its role's image (the serving one runs infra
    # validation: the candidate served by the image the endpoint will run).
    images = container_run["images"]
    assert len(images) == len(summary["step_seconds"]), (images, summary["step_seconds"])
    assert set(images) == {LOCAL_IMAGES.for_role(role) for role in Role}
    assert summary["serving"]["photos_checked"] == summary["eval_images"], "all served alike"


def test_the_steps_wrote_as_the_images_non_root_user(container_run: dict) -> None:
    """Everything the steps wrote (artifacts, the registry's copy of the model) is the images'
    user's: no step ran as root, none as the caller. (The calling process writes kfp.local's
    cache records and a copy of the report as ``report.html`` for a browser.)"""
    written = [
        path
        for path in Path(container_run["state_dir"]).rglob("*")
        if ("pipeline_root" in path.parts or "models" in path.parts)
        and ".kfp_cache" not in path.parts
        and path.name != "report.html"
    ]
    assert written
    others = [str(path) for path in written if path.lstat().st_uid != IMAGE_USER]
    assert not others, others[:10]


@pytest.fixture(scope="module")
def served_model_uri(container_run: dict, gcs_emulator: str) -> str:
    """The registered model of the container run, copied into the GCS emulator as Vertex AI
    copies a model's artifact_uri for its container."""
    (saved_model,) = Path(container_run["state_dir"]).glob("**/versions/*/saved_model.pb")
    return upload_folder(gcs_emulator_client(gcs_emulator), saved_model.parent, "served/model")


@pytest.fixture(scope="module")
def serving_container(served_model_uri: str, gcs_emulator: str) -> Iterator[dict]:
    """The serving image started as Vertex AI starts it; yields its URL and the health codes
    seen until it was ready."""
    port = free_port()
    name = f"beer-serving-test-{port}"
    podman(
        "run", "-d", "--name", name, "--network=host",
        "-e", f"AIP_HTTP_PORT={port}", "-e", f"AIP_PREDICT_ROUTE={PREDICT_ROUTE}",
        "-e", f"AIP_HEALTH_ROUTE={HEALTH_ROUTE}", "-e", f"AIP_STORAGE_URI={served_model_uri}",
        "-e", "AIP_DEPLOYED_MODEL_ID=2", "-e", "AIP_MODE=PREDICTION",
        "-e", f"STORAGE_EMULATOR_HOST={gcs_emulator}", "-e", "NO_GCE_CHECK=True",
        LOCAL_IMAGES.serving,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    codes: list[int] = []
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and codes[-1:] != [200]:
            with contextlib.suppress(requests.ConnectionError):
                codes.append(requests.get(url + HEALTH_ROUTE, timeout=5).status_code)
            time.sleep(0.05)
        assert codes[-1:] == [200], podman("logs", name).stderr[-3000:]
        yield {"url": url, "health": codes, "name": name}
    finally:
        podman("rm", "-f", name, check=False)


def test_serving_image_answers_health_503_until_the_model_is_loaded(
    serving_container: dict,
) -> None:
    codes = serving_container["health"]
    assert 503 in codes and codes[-1] == 200
    assert set(codes) == {503, 200}


def test_serving_image_classifies_the_eval_photos_in_the_challenge_format(
    serving_container: dict, beer_data_dir: Path
) -> None:
    photos = eval_photos(beer_data_dir)
    right = 0
    for answer, batch in predict_in_batches(serving_container["url"] + PREDICT_ROUTE, photos):
        assert answer["deployedModelId"] == "2"
        for prediction, (_, label) in zip(answer["predictions"], batch, strict=True):
            assert set(prediction) == {"CLASSES", "PROBABILITIES"}
            assert isinstance(prediction["CLASSES"], int)
            assert len(prediction["PROBABILITIES"]) == 5
            assert abs(sum(prediction["PROBABILITIES"]) - 1) < 1e-4
            right += prediction["CLASSES"] == label
    assert right / len(photos) >= 0.8


def test_serving_image_refuses_a_malformed_request_with_400(serving_container: dict) -> None:
    url = serving_container["url"] + PREDICT_ROUTE
    for body in ({"instances": [{"bytes": {"b64": "not base64!"}}]}, {"instancez": []}):
        response = requests.post(url, json=body, timeout=30)
        assert response.status_code == 400, response.text
        assert "error" in response.json()


def test_serving_image_runs_as_a_non_root_user(serving_container: dict) -> None:
    uid = podman("exec", serving_container["name"], "id", "-u").stdout.strip()
    assert uid == str(IMAGE_USER)
    top = podman("top", serving_container["name"], "user", "args").stdout
    assert "pipeline.serve" in top and "root" not in top
