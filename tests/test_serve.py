"""The prediction server on the local endpoints, as `python -m pipeline.serve` runs: Vertex's REST
contract, errors as JSON, limits, hot redeploys, metrics, OpenAPI, logs, graceful shutdown."""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from bench.serve_load import ServerProcess, request_body, server_process
from components.lib.targets.local import EndpointRegistry, ModelRegistry
from tests.conftest import ROOT

# Each module starts `python -m pipeline.serve` with TensorFlow and a trained model: seconds.
pytestmark = pytest.mark.slow

PROJECT, LOCATION = "local-project", "europe-west1"
ENDPOINT = f"projects/{PROJECT}/locations/{LOCATION}/endpoints/beer-endpoint"
PREDICT = f"/v1/{ENDPOINT}:predict"
MAX_BODY_BYTES = 200_000
JSON = {"Content-Type": "application/json"}


def deploy(state: Path, model_dir: Path) -> None:
    version = ModelRegistry(str(state), PROJECT, LOCATION).upload_version(
        "beer", str(model_dir), {"accuracy": 1.0}, {}
    )
    EndpointRegistry(str(state), PROJECT, LOCATION).deploy("beer-endpoint", version)


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path) -> Path:
    state = tmp_path_factory.mktemp("state")
    deploy(state, demo_model_dir)
    return state


@pytest.fixture(scope="module")
def server(state_dir: Path) -> Iterator[ServerProcess]:
    command = [sys.executable, "-m", "pipeline.serve", "--port", "0"]
    command += ["--state-dir", str(state_dir), "--max-body-bytes", str(MAX_BODY_BYTES)]
    command += ["--max-instances", "8"]
    with server_process(command, state_dir / "serve.log") as started:
        yield started


def call(
    server: ServerProcess, method: str, path: str, body: bytes | None = None
) -> tuple[int, dict, http.client.HTTPResponse]:
    address = urlsplit(server.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
    connection.request(method, path, body=body, headers=JSON)
    response = connection.getresponse()
    payload = json.loads(response.read())
    connection.close()
    return response.status, payload, response


def photo(demo_data_dir: Path, name: str, index: int = 0) -> bytes:
    return (demo_data_dir / f"eval/{name}/{index:03d}.jpg").read_bytes()


def test_binds_loopback_and_announces_the_predict_url(server: ServerProcess) -> None:
    assert server.url.startswith("http://127.0.0.1:")
    assert server.process.stdout.readline().strip() == f"predict: POST {server.url}{PREDICT}"


def test_health(server: ServerProcess) -> None:
    assert call(server, "GET", "/health")[:2] == (200, {"status": "ok"})


def test_batch_prediction_in_vertex_format(server: ServerProcess, demo_data_dir: Path) -> None:
    images = [photo(demo_data_dir, name) for name in ("1cat", "3rocket", "0astronaut")]

    status, payload, response = call(server, "POST", PREDICT, request_body(images))

    assert status == 200
    assert [p["CLASSES"] for p in payload["predictions"]] == [1, 3, 0]
    for prediction in payload["predictions"]:
        assert len(prediction["PROBABILITIES"]) == 4
        assert sum(prediction["PROBABILITIES"]) == pytest.approx(1.0, abs=1e-4)
    assert payload["model"] == f"projects/{PROJECT}/locations/{LOCATION}/models/beer"
    assert payload["modelVersionId"] == "1"
    assert payload["deployedModelId"] == "beer-v1"
    assert response.getheader("X-Model-Version") == "beer@1"


def b64_instance(data: bytes) -> dict:
    return {"bytes": {"b64": base64.b64encode(data).decode()}}


MALFORMED = [
    (b"{not json", "not JSON"),
    (b"\xff\xfe binary", "not JSON"),
    (b"", "not JSON"),
    (b"[1, 2]", '"instances"'),
    (b'{"inputs": []}', '"instances"'),
    (b'{"instances": []}', "non-empty list"),
    (b'{"instances": {"bytes": "x"}}', "non-empty list"),
    (json.dumps({"instances": [{"b64": ""}] * 9}).encode(), "9 instances in one request"),
    (b'{"instances": [{"bytes": {"b64": "@@@not base64@@@"}}]}', "instance 0: the b64 value"),
    (b'{"instances": [{"bytes": {"b64": 12}}]}', "instance 0 must be"),
    (b'{"instances": [{"image": "x"}]}', "instance 0 must be"),
    (b'{"instances": ["x"]}', "instance 0 must be"),
    (json.dumps({"instances": [b64_instance(b"plain text")]}).encode(), "instance(s) [0] are not"),
]


@pytest.mark.parametrize(("body", "message"), MALFORMED)
def test_malformed_requests_get_400_json(server: ServerProcess, body: bytes, message: str) -> None:
    status, payload, _ = call(server, "POST", PREDICT, body)
    assert status == 400
    assert payload["error"]["code"] == 400 and payload["error"]["status"] == "Bad Request"
    assert message in payload["error"]["message"]


def test_a_corrupt_image_in_a_batch_is_named_by_its_index(
    server: ServerProcess, demo_data_dir: Path
) -> None:
    good = photo(demo_data_dir, "1cat")
    truncated = good[:200]  # a JPEG's first bytes: it passes the format check, not decoding
    status, payload, _ = call(server, "POST", PREDICT, request_body([good, truncated, good]))
    assert status == 400
    assert "instance(s) [1] are not decodable" in payload["error"]["message"]


def test_unknown_endpoint_route_and_method(server: ServerProcess) -> None:
    status, payload, _ = call(server, "POST", PREDICT.replace("beer-endpoint", "nope"), b"{}")
    assert status == 404 and "not found" in payload["error"]["message"]
    assert call(server, "POST", PREDICT.replace(LOCATION, "us-east1"), b"{}")[0] == 404
    status, payload, _ = call(server, "GET", "/v1/nothing")
    assert status == 404 and payload["error"]["code"] == 404
    status, payload, response = call(server, "GET", PREDICT)
    assert status == 405 and "takes POST" in payload["error"]["message"]
    assert response.getheader("Allow") == "POST"


def test_oversized_body_gets_413(server: ServerProcess) -> None:
    status, payload, _ = call(server, "POST", PREDICT, b"x" * (MAX_BODY_BYTES + 1))
    assert status == 413 and "over the limit" in payload["error"]["message"]


def chunked(server: ServerProcess, body: bytes) -> tuple[int, dict]:
    address = urlsplit(server.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
    pieces = [body[i : i + 50_000] for i in range(0, len(body), 50_000)]
    connection.request(
        "POST",
        PREDICT,
        body=iter(pieces),
        headers={"Content-Type": "application/json"},
        encode_chunked=True,
    )
    response = connection.getresponse()
    payload = json.loads(response.read())
    connection.close()
    return response.status, payload


def test_chunked_bodies_are_read_within_the_limit(
    server: ServerProcess, demo_data_dir: Path
) -> None:
    status, payload = chunked(server, request_body([photo(demo_data_dir, "2coffee")]))
    assert status == 200 and payload["predictions"][0]["CLASSES"] == 2
    status, payload = chunked(server, b"x" * (MAX_BODY_BYTES + 50_000))
    assert status == 413 and "over the limit" in payload["error"]["message"]


def test_kept_alive_connection_serves_request_after_request(
    server: ServerProcess, demo_data_dir: Path
) -> None:
    body = request_body([photo(demo_data_dir, "1cat")])
    address = urlsplit(server.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    statuses = []
    for path, request in ((PREDICT, body), ("/v1/nothing", b"left unread"), (PREDICT, body)):
        connection.request("POST", path, body=request, headers=JSON)
        response = connection.getresponse()
        response.read()
        statuses.append(response.status)
    connection.close()

    # The unread body of the misrouted request must not be taken for the next request.
    assert statuses == [200, 404, 200]


def test_new_deployment_is_served_without_restart(
    server: ServerProcess,
    state_dir: Path,
    demo_model_dir: Path,
    demo_data_dir: Path,
    tmp_path: Path,
) -> None:
    deploy(state_dir, shutil.copytree(demo_model_dir, tmp_path / "retrained"))

    status, payload, response = call(
        server, "POST", PREDICT, request_body([photo(demo_data_dir, "1cat", 1)])
    )

    assert status == 200
    assert payload["modelVersionId"] == "2" and payload["predictions"][0]["CLASSES"] == 1
    assert response.getheader("X-Model-Version") == "beer@2"


def jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, **options)
    return buffer.getvalue()


def test_a_phone_photo_stored_sideways_is_classified_upright(
    server: ServerProcess, demo_data_dir: Path
) -> None:
    upright = Image.open(demo_data_dir / "eval/1cat/003.jpg").convert("RGB")
    sideways = upright.transpose(Image.Transpose.ROTATE_90)  # as a phone stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF Orientation: turn 90 degrees clockwise to view it upright
    images = [jpeg(upright), jpeg(sideways, exif=exif), jpeg(sideways)]

    status, payload, _ = call(server, "POST", PREDICT, request_body(images))

    assert status == 200
    original, tagged, untagged = (np.array(p["PROBABILITIES"]) for p in payload["predictions"])
    assert payload["predictions"][1]["CLASSES"] == payload["predictions"][0]["CLASSES"] == 1
    # The tagged photo is turned upright before the model sees it: the same pixels up to JPEG
    # noise; the same photo without its tag is seen sideways, and answered differently.
    assert np.abs(tagged - original).max() < 0.02
    assert np.abs(untagged - original).max() > 5 * np.abs(tagged - original).max()


def test_load_with_concurrent_clients_and_malformed_requests(
    server: ServerProcess, demo_data_dir: Path
) -> None:
    from bench.serve_load import report, run_load

    images = [p.read_bytes() for p in sorted((demo_data_dir / "eval").rglob("*.jpg"))]

    result = run_load(f"{server.url}{PREDICT}", images, total=800, clients=8)

    print(report(result))
    assert len(result.latencies) == 800
    assert result.statuses[200] == 720 and result.statuses[400] == 80
    assert result.wrong_answers == 0 and result.non_json_errors == 0
    assert call(server, "GET", "/health")[0] == 200


def metric(exposition: str, name: str) -> float:
    """The value of the series named exactly ``name`` (with its labels) in Prometheus text."""
    for line in exposition.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in the metrics")


def test_metrics_count_requests_errors_batches_and_versions(
    server: ServerProcess, demo_data_dir: Path
) -> None:
    address = urlsplit(server.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)

    def scrape() -> str:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.getheader("Content-Type").startswith("text/plain")
        return response.read().decode()

    before = scrape()
    assert call(server, "POST", PREDICT, request_body([photo(demo_data_dir, "1cat")] * 3))[0] == 200
    assert call(server, "POST", PREDICT, b"{not json")[0] == 400
    after = scrape()
    connection.close()

    ok = 'image_classifier_serving_requests_total{code="200",handler="predict"}'
    bad = 'image_classifier_serving_request_errors_total{code="400",handler="predict"}'
    assert metric(after, ok) - metric(before, ok) == 1
    assert metric(after, bad) - metric(before, bad) == 1
    batches = "image_classifier_serving_batch_size_sum"
    assert metric(after, batches) - metric(before, batches) == 3
    latency = 'image_classifier_serving_request_latency_seconds_count{handler="predict"}'
    assert metric(after, latency) >= 2
    info = 'image_classifier_serving_model_info{deployed_model_id="beer-v1",model_version="beer@1"}'
    assert f"{info} 1.0" in after


def test_openapi_page_and_models_describe_the_routes(server: ServerProcess) -> None:
    status, schema, _ = call(server, "GET", "/openapi.json")
    assert status == 200 and schema["openapi"].startswith("3.")
    predict = schema["paths"][
        "/v1/projects/{project}/locations/{location}/endpoints/{endpoint_id}:predict"
    ]
    assert "post" in predict and "400" in {str(code) for code in predict["post"]["responses"]}
    assert {"/", "/health", "/metrics", "/models", "/openapi.json"} <= set(schema["paths"])

    status, listed, _ = call(server, "GET", "/models")
    assert status == 200
    assert listed["models"] == [
        {
            "name": ENDPOINT,
            "displayName": "beer",
            "predictPath": PREDICT,
            "classNames": ["0astronaut", "1cat", "2coffee", "3rocket"],
        }
    ]
    address = urlsplit(server.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    connection.request("GET", "/")
    response = connection.getresponse()
    page = response.read().decode()
    assert response.status == 200 and response.getheader("Content-Type").startswith("text/html")
    assert 'id="photo"' in page and 'fetch("/models")' in page


# What Python's logging or warnings would print without the JSON formatter.
PLAIN_PYTHON_LOG = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL):[\w.]*:|^Traceback|Warning: ")


def test_logs_are_json_lines_with_each_request(server: ServerProcess, state_dir: Path) -> None:
    call(server, "GET", "/health")
    text = (state_dir / "serve.log").read_text().splitlines()
    # Other lines are printed by TensorFlow's native code (its C++ log, libjpeg).
    assert not [line for line in text if PLAIN_PYTHON_LOG.search(line)]
    lines = [json.loads(line) for line in text if line.startswith("{")]
    requests_logged = [line for line in lines if "httpRequest" in line]
    assert requests_logged and all(line["severity"] for line in lines)
    predicted = [line for line in requests_logged if line["handler"] == "predict"]
    assert {line["httpRequest"]["status"] for line in predicted} >= {200, 400, 404, 405, 413}
    assert any(line.get("modelVersion") == "beer@1" for line in predicted)


def test_help_is_fast_and_imports_no_tensorflow() -> None:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.serve", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stderr == ""
    assert "AIP_STORAGE_URI" in result.stdout and "--batching" in result.stdout
    assert time.perf_counter() - started < 5
    imported = subprocess.run(
        [sys.executable, "-c", "import sys, pipeline.serve; print(sorted(sys.modules))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "tensorflow" not in imported and "pipeline.run" not in imported


def test_sigterm_lets_the_request_in_flight_finish(
    state_dir: Path, demo_data_dir: Path, tmp_path: Path
) -> None:
    command = [sys.executable, "-m", "pipeline.serve", "--port", "0"]
    with server_process([*command, "--state-dir", str(state_dir)], tmp_path / "log") as started:
        body = request_body([photo(demo_data_dir, "1cat")])
        assert call(started, "POST", PREDICT, body)[0] == 200  # the model is loaded
        answers: list[int] = []
        many = request_body([photo(demo_data_dir, "1cat", i % 6) for i in range(256)])
        client = threading.Thread(
            target=lambda: answers.append(call(started, "POST", PREDICT, many)[0])
        )
        client.start()
        time.sleep(0.3)  # the request is in flight: 256 images take seconds
        started.process.send_signal(signal.SIGTERM)
        client.join(timeout=120)
        # uvicorn ends by re-raising the signal it handled, after the graceful shutdown.
        assert started.process.wait(timeout=60) in (0, -signal.SIGTERM)
    assert answers == [200]
    assert "Finished server process" in (tmp_path / "log").read_text()


def test_a_canary_gets_its_share_of_requests_until_promoted(
    server: tuple[str, int],
    state_dir: Path,
    demo_model_dir: Path,
    demo_data_dir: Path,
    tmp_path: Path,
) -> None:
    from components.lib.targets import Serving

    canary_model = shutil.copytree(demo_model_dir, tmp_path / "canary")
    version = ModelRegistry(str(state_dir), PROJECT, LOCATION).upload_version(
        "beer", str(canary_model), {"accuracy": 1.0}, {}
    )
    canary = EndpointRegistry(str(state_dir), PROJECT, LOCATION, Serving(traffic_percentage=10))
    split = canary.deploy("beer-endpoint", version)["trafficSplit"]
    assert sorted(split.values()) == [10, 90]
    body = request_body([photo(demo_data_dir, "1cat")])

    served = [call(server, "POST", PREDICT, body)[1]["deployedModelId"] for _ in range(300)]

    # Binomial(300, 0.1): 30 expected; outside 10..55 once in about 10^5 runs.
    assert 10 <= served.count(f"beer-v{version.version_id}") <= 55
    assert set(served) == set(split)
    EndpointRegistry(str(state_dir), PROJECT, LOCATION).deploy("beer-endpoint", version)
    assert {call(server, "POST", PREDICT, body)[1]["deployedModelId"] for _ in range(20)} == {
        f"beer-v{version.version_id}"
    }
