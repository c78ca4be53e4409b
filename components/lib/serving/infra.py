"""Infra validation: the candidate model served as Vertex AI will serve it, before it is registered.

``python -m pipeline.serve`` (the serving image's entrypoint) is started in a subprocess with
the variables Vertex AI sets in a serving container (``AIP_STORAGE_URI``, ``AIP_HTTP_PORT``,
``AIP_HEALTH_ROUTE``, ``AIP_PREDICT_ROUTE``, the routes the registry records), its health route
is polled until it answers 200 (503 while the model loads), and the photos are sent through its
predict route as Vertex JSON, one photo per request: first by one client, then by
``CONCURRENT_CLIENTS`` at once. Every answer must name the class that was expected of it (what
the evaluate step got through the same signature in its own process). The figures: the model's
size, the seconds from the server's start to its first healthy answer, and p50 and p95 latency
of a one-image request at each number of clients.

No TensorFlow here: the server's process imports it, this one only sends HTTP requests, so the
check runs wherever the server does (the serving image on Vertex AI, a kfp.local subprocess).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import requests

from components.lib.serving.protocol import request_body
from components.lib.serving.routing import CONTAINER_HEALTH_ROUTE, CONTAINER_PREDICT_ROUTE
from components.lib.storage import filesystem, read_files

SERVER_COMMAND = (sys.executable, "-m", "pipeline.serve")
"""The serving image's ENTRYPOINT (docker/Dockerfile.serving), in this Python."""
CONCURRENT_CLIENTS = 4
READY_TIMEOUT_S = 600.0
REQUEST_TIMEOUT_S = 120.0
POLL_INTERVAL_S = 0.1
MB = 1_000_000


class InfraValidationError(RuntimeError):
    """The server could not load the model, or answered otherwise than evaluate found."""


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``share`` of them at or below."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


@dataclass(frozen=True)
class Expected:
    """One photo to send (its path under the data folder) and the class it must be given."""

    photo: str
    predicted: int


@dataclass(frozen=True)
class Latency:
    """One-image requests at a number of concurrent clients (the first request excluded)."""

    clients: int
    requests: int
    p50_ms: float
    p95_ms: float

    @classmethod
    def of(cls, clients: int, seconds: Sequence[float]) -> Latency:
        return cls(
            clients,
            len(seconds),
            round(1000 * percentile(seconds, 0.5), 1),
            round(1000 * percentile(seconds, 0.95), 1),
        )


@dataclass(frozen=True)
class ServingFigures:
    """What infra validation measured of a model under the serving container's contract."""

    model_mb: float
    load_seconds: float
    """From the server's start to its first healthy answer: what a new replica takes."""
    loading_answers: int
    """Health answers 503 (still loading) before the first 200."""
    photos: int
    """Photos whose served class was checked, at each number of clients."""
    single: Latency
    concurrent: Latency

    def to_dict(self) -> dict[str, float | int]:
        """Flat figures: the summary's ``serving`` entry, the step's metrics, the registry's."""
        return {
            "model_mb": self.model_mb,
            "load_seconds": self.load_seconds,
            "loading_answers": self.loading_answers,
            "photos_checked": self.photos,
            "latency_p50_ms": self.single.p50_ms,
            "latency_p95_ms": self.single.p95_ms,
            "concurrent_clients": self.concurrent.clients,
            "concurrent_latency_p50_ms": self.concurrent.p50_ms,
            "concurrent_latency_p95_ms": self.concurrent.p95_ms,
        }

    @classmethod
    def from_dict(cls, figures: dict) -> ServingFigures:
        """What ``to_dict`` wrote (KFP may turn its whole numbers into floats)."""
        requests_each = int(figures["photos_checked"])
        return cls(
            model_mb=figures["model_mb"],
            load_seconds=figures["load_seconds"],
            loading_answers=int(figures["loading_answers"]),
            photos=requests_each,
            single=Latency(1, requests_each, figures["latency_p50_ms"], figures["latency_p95_ms"]),
            concurrent=Latency(
                int(figures["concurrent_clients"]),
                requests_each,
                figures["concurrent_latency_p50_ms"],
                figures["concurrent_latency_p95_ms"],
            ),
        )

    def describe(self) -> str:
        """One line: the run summary's and the report's."""
        return (
            f"p50/p95 of a one-image request {self.single.p50_ms:.1f}/{self.single.p95_ms:.1f} "
            f"ms at 1 client, {self.concurrent.p50_ms:.1f}/{self.concurrent.p95_ms:.1f} ms at "
            f"{self.concurrent.clients}; model {self.model_mb:.1f} MB; healthy "
            f"{self.load_seconds:.1f} s after start; {self.photos} photos answered as evaluate "
            "found"
        )


def model_size_mb(model_uri: str) -> float:
    """The exported model's files, in MB (10^6 bytes), read through the storage seam."""
    fs, path = filesystem(model_uri)
    return round(fs.du(path, total=True) / MB, 2)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_error(log_path: str) -> str:
    """The server's own word on why it stopped, from its JSON log: the last line of the last
    logged exception (e.g. ``OSError: SavedModel file does not exist at: ...``), else the
    last line it wrote."""
    with open(log_path, errors="replace") as file:
        lines = [line.strip() for line in file if line.strip()]
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("exception"):
            return record["exception"].strip().splitlines()[-1]
    return lines[-1] if lines else "it wrote nothing"


@dataclass(frozen=True)
class Server:
    """A running server: where to send requests, and how it became ready."""

    url: str
    load_seconds: float
    loading_answers: int


@contextmanager
def serving_container(model_uri: str, log_path: str) -> Iterator[Server]:
    """``python -m pipeline.serve`` on ``model_uri`` with Vertex AI's container variables, from
    its start until it is healthy; stopped with SIGTERM (as Vertex AI stops a replica) at the
    end. InfraValidationError, with the server's own error, when it exits or never gets
    ready."""
    port = _free_port()
    env = {
        **os.environ,
        "AIP_STORAGE_URI": model_uri,
        "AIP_HTTP_PORT": str(port),
        "AIP_HEALTH_ROUTE": CONTAINER_HEALTH_ROUTE,
        "AIP_PREDICT_ROUTE": CONTAINER_PREDICT_ROUTE,
    }
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        started = time.perf_counter()
        process = subprocess.Popen(SERVER_COMMAND, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        loading = _wait_until_healthy(process, url + CONTAINER_HEALTH_ROUTE, log_path)
        yield Server(url, round(time.perf_counter() - started, 2), loading)
    finally:
        stop(process)


def stop(process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGTERM, as Vertex AI stops a replica; SIGKILL if it has not exited in ``timeout_s``."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _loopback_session() -> requests.Session:
    """A session that talks to the server directly: no proxy from the environment."""
    session = requests.Session()
    session.trust_env = False
    return session


def _wait_until_healthy(process: subprocess.Popen, health_url: str, log_path: str) -> int:
    """Poll the health route until 200; returns how many 503 (loading) answers came first."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    loading = 0
    with _loopback_session() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise InfraValidationError(
                    f"the server cannot load the model (it exited {process.returncode} before "
                    f"it was healthy): {server_error(log_path)}"
                )
            try:
                status = session.get(health_url, timeout=REQUEST_TIMEOUT_S).status_code
            except requests.ConnectionError:
                status = None  # not listening yet
            if status == 200:
                return loading
            if status not in (None, 503):
                raise InfraValidationError(
                    f"the health route {health_url} answered {status}: the server does not "
                    "serve AIP_HEALTH_ROUTE as Vertex AI needs"
                )
            loading += status == 503
            time.sleep(POLL_INTERVAL_S)
    raise InfraValidationError(
        f"the server was not healthy {READY_TIMEOUT_S:.0f} s after its start; its last word: "
        f"{server_error(log_path)}"
    )


def _predict(session: requests.Session, url: str, body: bytes) -> int:
    """The class the server gives the one photo of ``body``."""
    response = session.post(
        url, data=body, headers={"Content-Type": "application/json"}, timeout=REQUEST_TIMEOUT_S
    )
    if response.status_code != 200:
        raise InfraValidationError(
            f"the predict route answered {response.status_code}: {response.text[:500]}"
        )
    return int(response.json()["predictions"][0]["CLASSES"])


def send_photos(url: str, bodies: Sequence[bytes], clients: int) -> tuple[list[int], list[float]]:
    """Each body sent once, by ``clients`` threads with a kept-alive connection each, the next
    as soon as the last is answered; the served classes in the bodies' order, and each
    request's seconds."""
    classes: list[int] = [0] * len(bodies)
    seconds: list[float] = [0.0] * len(bodies)
    errors: list[Exception] = []
    order = iter(range(len(bodies)))
    lock = threading.Lock()

    def client() -> None:
        with _loopback_session() as session:
            while True:
                with lock:
                    index = next(order, None)
                if index is None or errors:
                    return
                started = time.perf_counter()
                try:
                    classes[index] = _predict(session, url, bodies[index])
                except (InfraValidationError, requests.RequestException, ValueError) as error:
                    errors.append(error)
                    return
                seconds[index] = time.perf_counter() - started

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise InfraValidationError(f"a prediction request failed: {errors[0]}")
    return classes, seconds


def _mismatches(
    expected: Sequence[Expected], served: Sequence[int], class_names: Sequence[str], clients: int
) -> str:
    wrong = [
        f"{item.photo}: served {class_names[got]!r}, evaluate found {class_names[item.predicted]!r}"
        for item, got in zip(expected, served, strict=True)
        if got != item.predicted
    ]
    if not wrong:
        return ""
    return (
        f"{len(wrong)} of {len(expected)} photos were answered otherwise than evaluate found, at "
        f"{clients} client(s): " + "; ".join(wrong[:5])
    )


def validate_serving(
    model_uri: str,
    data_dir: str,
    expected: Sequence[Expected],
    class_names: Sequence[str],
    clients: int = CONCURRENT_CLIENTS,
) -> ServingFigures:
    """Serve ``model_uri`` as Vertex AI would, send every ``expected`` photo (under
    ``data_dir``) at 1 and at ``clients`` clients, check each served class, and measure.

    One request before the measured ones warms the model (its first call builds the graph's
    runtime state) and is not counted. InfraValidationError when the server cannot load the
    model, or any answer differs from what was expected.
    """
    if not expected:
        raise InfraValidationError("no photos to send: evaluate recorded no per-photo results")
    fs, root = filesystem(data_dir)
    photos = read_files(fs, [f"{root.rstrip('/')}/{item.photo}" for item in expected])
    unread = [(item.photo, got) for item, got in zip(expected, photos, strict=True)]
    unread = [f"{photo}: {got}" for photo, got in unread if isinstance(got, OSError)]
    if unread:
        raise InfraValidationError(f"photos cannot be read: {'; '.join(unread[:5])}")
    bodies = [request_body([photo]) for photo in photos]
    latencies = {}
    with (
        tempfile.TemporaryDirectory() as work,
        serving_container(model_uri, os.path.join(work, "serve.log")) as server,
    ):
        predict_url = server.url + CONTAINER_PREDICT_ROUTE
        send_photos(predict_url, bodies[:1], 1)
        for count in (1, clients):
            served, seconds = send_photos(predict_url, bodies, count)
            problem = _mismatches(expected, served, class_names, count)
            if problem:
                raise InfraValidationError(problem)
            latencies[count] = Latency.of(count, seconds)
    return ServingFigures(
        model_mb=model_size_mb(model_uri),
        load_seconds=server.load_seconds,
        loading_answers=server.loading_answers,
        photos=len(expected),
        single=latencies[1],
        concurrent=latencies[clients],
    )
