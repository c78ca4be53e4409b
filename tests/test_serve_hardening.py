"""The prediction server against careless or hostile clients, on loopback: image pixel limits read
from the header before decoding, connection and header limits, malformed JSON, hang-ups, bad
settings, JSON-only logs, and nothing of the server's files in its answers.

The server runs as ``python -m pipeline.serve`` over a state folder whose deployed "model" is an
empty folder: whatever is refused before the model is reached answers at once (no TensorFlow);
what reaches the model gets a 500, which is how these tests see that it did.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image

from bench.serve_load import ServerProcess, request_body, server_process
from components.lib.targets.local import EndpointRegistry, ModelRegistry
from tests.conftest import ROOT

PROJECT, LOCATION = "local-project", "europe-west1"
ENDPOINT = f"projects/{PROJECT}/locations/{LOCATION}/endpoints/beer-endpoint"
PREDICT = f"/v1/{ENDPOINT}:predict"
REQUEST_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 20
MAX_HEADER_BYTES = 4096
MAX_IMAGE_PIXELS = 1_000_000


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = tmp_path_factory.mktemp("state")
    not_a_model = tmp_path_factory.mktemp("not-a-model")
    version = ModelRegistry(str(state), PROJECT, LOCATION).upload_version(
        "beer", str(not_a_model), {"accuracy": 1.0}, {}
    )
    EndpointRegistry(str(state), PROJECT, LOCATION).deploy("beer-endpoint", version)
    return state


@pytest.fixture(scope="module")
def server(state_dir: Path) -> Iterator[ServerProcess]:
    command = [sys.executable, "-m", "pipeline.serve", "--port", "0"]
    command += ["--state-dir", str(state_dir), "--request-timeout-s", str(REQUEST_TIMEOUT_S)]
    command += ["--max-connections", str(MAX_CONNECTIONS)]
    command += ["--max-header-bytes", str(MAX_HEADER_BYTES)]
    command += ["--max-image-pixels", str(MAX_IMAGE_PIXELS), "--max-instances", "8"]
    # TensorFlow's C++ code logs its INFO lines too: they must come out as JSON.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"}
    with server_process(command, state_dir / "serve.log", env=env) as started:
        yield started


def connect(server: ServerProcess, timeout: float = 30) -> http.client.HTTPConnection:
    address = urlsplit(server.url)
    return http.client.HTTPConnection(address.hostname, address.port, timeout=timeout)


def call(
    server: ServerProcess,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict, http.client.HTTPResponse]:
    connection = connect(server, timeout=120)
    headers = {"Content-Type": "application/json"} if headers is None else headers
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    text = response.read()
    connection.close()
    return response.status, json.loads(text) if text else {}, response


def raw_socket(server: ServerProcess) -> socket.socket:
    address = urlsplit(server.url)
    return socket.create_connection((address.hostname, address.port), timeout=30)


def closed_by_server(sock: socket.socket, within_s: float) -> bool:
    """Whether the server closes ``sock`` (EOF or reset) within ``within_s``."""
    sock.settimeout(within_s)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def log_lines(state_dir: Path) -> list[str]:
    return (state_dir / "serve.log").read_text().splitlines()


# 1. Pixels, from the header.


@pytest.mark.parametrize(
    ("image", "size"),
    [(png(1_000_000, 1), "1000000 x 1"), (png(1100, 1000), "1100 x 1000")],
    ids=["a-long-line", "too-many-pixels"],
)
def test_an_image_over_the_pixel_limits_is_refused_before_decoding(
    server: ServerProcess, image: bytes, size: str
) -> None:
    started = time.perf_counter()
    status, payload, _ = call(server, "POST", PREDICT, request_body([png(8, 8), image]))
    assert status == 400, payload
    message = payload["error"]["message"]
    assert f"instance 1 is {size} pixels" in message and "1,000,000 pixels" in message
    assert time.perf_counter() - started < 5  # no model loaded, nothing decoded


def test_image_size_reads_each_format_s_header_without_decoding() -> None:
    from components.lib.serving.protocol import image_size

    for fmt in ("PNG", "JPEG", "GIF", "BMP"):
        buffer = io.BytesIO()
        Image.new("RGB", (300, 7)).save(buffer, format=fmt)
        assert image_size(buffer.getvalue()) == (300, 7), fmt
    assert image_size(b"\x89PNG\r\n\x1a\n truncated") is None
    assert image_size(b"plain text") is None


# 2. Idle and unfinished connections.


def test_idle_connections_over_the_cap_do_not_starve_health_checks(
    server: ServerProcess, state_dir: Path
) -> None:
    idle = [raw_socket(server) for _ in range(MAX_CONNECTIONS + 10)]
    slow = raw_socket(server)
    slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the rest
    try:
        started = time.perf_counter()
        assert call(server, "GET", "/health")[0] == 200
        assert time.perf_counter() - started < REQUEST_TIMEOUT_S
        # The oldest were closed at the cap, the rest (and the unfinished request) at the
        # deadline.
        assert closed_by_server(slow, within_s=REQUEST_TIMEOUT_S + 5)
        assert all(closed_by_server(sock, within_s=REQUEST_TIMEOUT_S + 5) for sock in idle)
    finally:
        for sock in [*idle, slow]:
            sock.close()
    time.sleep(0.5)
    closes = [
        json.loads(line)
        for line in log_lines(state_dir)
        if '"closedConnections"' in line and line.startswith("{")
    ]
    assert closes and all(line["severity"] == "WARNING" for line in closes)
    reasons = {reason for line in closes for reason in line["closedConnections"]}
    assert "evicted at the cap" in reasons and any("whole request" in r for r in reasons)


def test_an_unfinished_body_is_cut_off_and_not_counted_as_a_server_error(
    server: ServerProcess, state_dir: Path
) -> None:
    sock = raw_socket(server)
    sock.sendall(
        f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 100000\r\n\r\n{".encode()
    )
    try:
        assert closed_by_server(sock, within_s=REQUEST_TIMEOUT_S + 5)
    finally:
        sock.close()
    hung_up = raw_socket(server)  # a client that gives up mid-upload
    hung_up.sendall(
        f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 100000\r\n\r\n{".encode()
    )
    time.sleep(0.2)
    hung_up.close()
    time.sleep(0.5)
    logged = [json.loads(line) for line in log_lines(state_dir) if line.startswith("{")]
    assert not [line for line in logged if line["severity"] in ("ERROR", "CRITICAL")]
    statuses = [line["httpRequest"]["status"] for line in logged if "httpRequest" in line]
    assert statuses.count(499) >= 2
    assert 'code="500"' not in metrics_text(server)


def metrics_text(server: ServerProcess) -> str:
    connection = connect(server)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    return text


# 3. Headers.


def test_headers_over_the_limit_get_400_and_the_connection_closed(server: ServerProcess) -> None:
    sock = raw_socket(server)
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 64 * 1024)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    except ConnectionResetError:  # the rest of what was sent may reset the closed connection
        pass
    finally:
        sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    message = json.loads(body)["error"]["message"]
    assert f"over {MAX_HEADER_BYTES} bytes" in message
    assert call(server, "GET", "/health")[0] == 200


# 5. Malformed JSON, methods.


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"instances": [' + b"9" * 5000 + b"]}", "not JSON"),
    ],
    ids=["deeply-nested", "huge-integer"],
)
def test_pathological_json_gets_400(server: ServerProcess, body: bytes, message: str) -> None:
    status, payload, _ = call(server, "POST", PREDICT, body)
    assert status == 400 and message in payload["error"]["message"]


def test_405_names_the_methods_the_route_takes(server: ServerProcess) -> None:
    status, payload, response = call(server, "POST", "/openapi.json", b"{}")
    assert status == 405
    assert payload["error"]["message"] == "/openapi.json takes GET, HEAD, not POST"
    assert set(response.getheader("Allow").split(", ")) == {"GET", "HEAD"}
    status, payload, _ = call(server, "GET", PREDICT)
    assert status == 405 and payload["error"]["message"].endswith("takes POST, not GET")


# 8. What an answer reveals, Host, Content-Type.


def test_a_server_error_does_not_reveal_the_state_folder(
    server: ServerProcess, state_dir: Path
) -> None:
    status, payload, _ = call(server, "POST", PREDICT, request_body([png(8, 8)]))
    assert status == 500  # the deployed "model" is an empty folder
    assert payload["error"]["message"] == "prediction failed; the server's log says why"
    status, payload, _ = call(server, "POST", PREDICT.replace("beer-endpoint", "nope"), b"{}")
    assert status == 404 and str(state_dir) not in json.dumps(payload)
    # The log keeps the detail.
    logged = log_lines(state_dir)
    assert any("prediction failed" in line and str(state_dir) in line for line in logged)


def test_health_with_a_slash_is_not_redirected_to_the_host_header(server: ServerProcess) -> None:
    status, _, response = call(server, "GET", "/health/", headers={"Host": "evil.example"})
    assert status == 404 and response.getheader("Location") is None


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_predict_requires_json_content_type(
    server: ServerProcess, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    status, payload, _ = call(server, "POST", PREDICT, request_body([png(8, 8)]), headers)
    assert status == 415 and "application/json" in payload["error"]["message"]
    status, _, _ = call(
        server, "POST", PREDICT, b"{}", {"Content-Type": "application/json; charset=utf-8"}
    )
    assert status == 400  # JSON, read: only the missing "instances" is wrong


# 7. Logs (after the tests above: TensorFlow has been imported by then).


def test_every_stderr_line_is_json(server: ServerProcess, state_dir: Path) -> None:
    assert call(server, "POST", PREDICT, request_body([png(8, 8)]))[0] == 500  # TF imported
    time.sleep(0.5)
    lines = log_lines(state_dir)
    assert [line for line in lines if not line.startswith("{")] == []
    logged = [json.loads(line) for line in lines]
    native = [line for line in logged if line["logger"] == "native"]
    # TensorFlow's C++ INFO lines, and absl's "WARNING: All log messages before ..."
    assert any(line["severity"] == "INFO" for line in native), native


# 6. Bad settings.

BAD_SETTINGS = [
    (["--port", "99999"], {}, "port must be 0 to 65535"),
    ([], {"AIP_HTTP_PORT": "abc"}, "AIP_HTTP_PORT must be a port number"),
    (
        ["--model-dir", "/nowhere"],
        {"AIP_PREDICT_ROUTE": "predict"},
        "AIP_PREDICT_ROUTE must be a path starting with '/'",
    ),
    (["--max-body-bytes", "-5"], {}, "max_body_bytes must be at least 1, not -5"),
    (["--max-instances", "0"], {}, "max_instances must be at least 1, not 0"),
    (["--max-connections", "0"], {}, "max_connections must be above 0"),
    (["--port", "abc"], {}, "argument --port: invalid int value"),
]


@pytest.mark.parametrize(("args", "env", "message"), BAD_SETTINGS)
def test_bad_settings_get_a_one_line_error(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AIP_")}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.serve", "--state-dir", str(tmp_path), *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert message in result.stderr


def test_a_corrupt_endpoint_file_is_named(tmp_path: Path) -> None:
    endpoints = tmp_path / "endpoints"
    endpoints.mkdir()
    (endpoints / "beer.json").write_text('{"name": "projects/p/loc')
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.serve", "--state-dir", str(tmp_path), "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert f"{endpoints / 'beer.json'} is not a readable JSON record" in result.stderr
