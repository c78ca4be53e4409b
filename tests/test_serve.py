"""The local endpoint server: Vertex's REST prediction contract, errors as JSON, hot redeploys."""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.lib.targets.local import EndpointRegistry, ModelRegistry
from pipeline.serve import ServingLimits, make_server

PROJECT, LOCATION = "local-project", "europe-west1"
PREDICT = f"/v1/projects/{PROJECT}/locations/{LOCATION}/endpoints/beer-endpoint:predict"


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path) -> Path:
    state = tmp_path_factory.mktemp("state")
    version = ModelRegistry(str(state), PROJECT, LOCATION).upload_version(
        "beer", str(demo_model_dir), {"accuracy": 1.0}, {}
    )
    EndpointRegistry(str(state), PROJECT, LOCATION).deploy("beer-endpoint", version)
    return state


@pytest.fixture(scope="module")
def server(state_dir: Path) -> Iterator[tuple[str, int]]:
    limits = ServingLimits(max_body_bytes=200_000, max_instances=8)
    httpd = make_server(str(state_dir), port=0, limits=limits)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[:2]
    httpd.shutdown()
    httpd.server_close()


def call(server: tuple[str, int], method: str, path: str, body: bytes | None = None):
    connection = http.client.HTTPConnection(*server, timeout=60)
    connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    payload = json.loads(response.read())
    connection.close()
    return response.status, payload


def instance(path: Path) -> dict:
    return {"bytes": {"b64": base64.b64encode(path.read_bytes()).decode()}}


def test_binds_loopback_by_default(server: tuple[str, int]) -> None:
    assert server[0] == "127.0.0.1"


def test_health(server: tuple[str, int]) -> None:
    assert call(server, "GET", "/health")[0] == 200


def test_batch_prediction_in_vertex_format(server: tuple[str, int], demo_data_dir: Path) -> None:
    photos = [demo_data_dir / f"eval/{name}/000.jpg" for name in ("1cat", "3rocket", "0astronaut")]
    body = json.dumps({"instances": [instance(p) for p in photos]}).encode()

    status, payload = call(server, "POST", PREDICT, body)

    assert status == 200
    assert [p["CLASSES"] for p in payload["predictions"]] == [1, 3, 0]
    for prediction in payload["predictions"]:
        assert len(prediction["PROBABILITIES"]) == 4
        assert sum(prediction["PROBABILITIES"]) == pytest.approx(1.0, abs=1e-4)
    assert payload["model"] == f"projects/{PROJECT}/locations/{LOCATION}/models/beer"
    assert payload["modelVersionId"] == "1"
    assert payload["deployedModelId"] == "beer-v1"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not JSON"),
        (b'{"inputs": []}', '"instances"'),
        (b'{"instances": []}', "non-empty list"),
        (json.dumps({"instances": [{"b64": ""}] * 9}).encode(), "9 instances in one request"),
        (b'{"instances": [{"bytes": {"b64": "@@@not base64@@@"}}]}', "instance 0: the b64 value"),
        (b'{"instances": [{"image": "x"}]}', "instance 0 must be"),
        (
            json.dumps(
                {"instances": [{"bytes": {"b64": base64.b64encode(b"plain text").decode()}}]}
            ).encode(),
            r"instance(s) [0] are not decodable",
        ),
    ],
)
def test_malformed_requests_get_400_json(
    server: tuple[str, int], body: bytes, message: str
) -> None:
    status, payload = call(server, "POST", PREDICT, body)
    assert status == 400
    assert payload["error"]["code"] == 400
    assert message in payload["error"]["message"]


def test_unknown_endpoint_and_route(server: tuple[str, int]) -> None:
    status, payload = call(server, "POST", PREDICT.replace("beer-endpoint", "nope"), b"{}")
    assert status == 404 and "not found" in payload["error"]["message"]
    status, _ = call(server, "POST", PREDICT.replace(LOCATION, "us-east1"), b"{}")
    assert status == 404
    assert call(server, "GET", "/v1/nothing")[0] == 404


def test_oversized_body_gets_413(server: tuple[str, int]) -> None:
    status, payload = call(server, "POST", PREDICT, b"x" * 300_000)
    assert status == 413 and "over the limit" in payload["error"]["message"]


def test_kept_alive_connection_serves_request_after_request(
    server: tuple[str, int], demo_data_dir: Path
) -> None:
    body = json.dumps({"instances": [instance(demo_data_dir / "eval/1cat/000.jpg")]}).encode()
    connection = http.client.HTTPConnection(*server, timeout=60)
    statuses = []
    for path, request_body in ((PREDICT, body), ("/v1/nothing", b"left unread"), (PREDICT, body)):
        connection.request("POST", path, body=request_body)
        response = connection.getresponse()
        response.read()
        statuses.append((response.status, response.getheader("Connection")))
    connection.close()

    # The unread body of the misrouted request must not be taken for the next request.
    assert statuses == [(200, None), (404, "close"), (200, None)]


def test_chunked_body_gets_411(server: tuple[str, int]) -> None:
    connection = http.client.HTTPConnection(*server, timeout=60)
    connection.request("POST", PREDICT, body=iter([b"{}"]), encode_chunked=True)
    response = connection.getresponse()
    assert (
        response.status == 411
        and "Content-Length" in json.loads(response.read())["error"]["message"]
    )
    connection.close()


def test_new_deployment_is_served_without_restart(
    server: tuple[str, int],
    state_dir: Path,
    demo_model_dir: Path,
    demo_data_dir: Path,
    tmp_path: Path,
) -> None:
    retrained = shutil.copytree(demo_model_dir, tmp_path / "retrained")
    version = ModelRegistry(str(state_dir), PROJECT, LOCATION).upload_version(
        "beer", str(retrained), {"accuracy": 1.0}, {}
    )
    EndpointRegistry(str(state_dir), PROJECT, LOCATION).deploy("beer-endpoint", version)
    body = json.dumps({"instances": [instance(demo_data_dir / "eval/1cat/001.jpg")]}).encode()

    status, payload = call(server, "POST", PREDICT, body)

    assert status == 200
    assert payload["modelVersionId"] == "2" and payload["predictions"][0]["CLASSES"] == 1


def test_load_with_concurrent_clients_and_malformed_requests(
    server: tuple[str, int], demo_data_dir: Path
) -> None:
    from bench.serve_load import report, run_load

    images = [p.read_bytes() for p in sorted((demo_data_dir / "eval").rglob("*.jpg"))]
    url = f"http://{server[0]}:{server[1]}{PREDICT}"

    result = run_load(url, images, total=2000, clients=8)

    print(report(result))
    assert len(result.latencies) == 2000
    assert result.statuses[200] == 1800 and result.statuses[400] == 200
    assert result.wrong_answers == 0 and result.non_json_errors == 0
    assert call(server, "GET", "/health")[0] == 200


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
    body = json.dumps({"instances": [instance(demo_data_dir / "eval/1cat/001.jpg")]}).encode()

    served = [call(server, "POST", PREDICT, body)[1]["deployedModelId"] for _ in range(300)]

    # Binomial(300, 0.1): 30 expected; outside 10..55 once in about 10^5 runs.
    assert 10 <= served.count(f"beer-v{version.version_id}") <= 55
    assert set(served) == set(split)
    EndpointRegistry(str(state_dir), PROJECT, LOCATION).deploy("beer-endpoint", version)
    assert {call(server, "POST", PREDICT, body)[1]["deployedModelId"] for _ in range(20)} == {
        f"beer-v{version.version_id}"
    }
