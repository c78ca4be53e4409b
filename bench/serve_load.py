"""Load test of the local endpoint: many concurrent clients, some malformed requests, on loopback.

Every well-formed request must get the same answer as a lone request would; every malformed one
a 4xx JSON error; no 5xx; the server stays up. Prints requests/s and p50/p99 latency.

    python -m bench.serve_load --images DIR [--requests 2000] [--clients 8] \
        --url http://127.0.0.1:8080/v1/projects/P/locations/L/endpoints/E:predict
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests

from bench.common import percentile, run_in_threads
from components.lib.serving.infra import stop
from components.lib.serving.protocol import request_body

ROOT = Path(__file__).resolve().parent.parent

MALFORMED_BODIES: tuple[bytes, ...] = (
    b"{not json",
    b'{"inputs": []}',
    b'{"instances": [{"bytes": {"b64": "@@not base64@@"}}]}',
    json.dumps({"instances": [{"bytes": {"b64": base64.b64encode(b"text").decode()}}]}).encode(),
    b'{"instances": [{"image": 1}]}',
)


@dataclass
class LoadResult:
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    wrong_answers: int = 0
    non_json_errors: int = 0

    @property
    def requests_per_second(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile_ms(self, share: float) -> float:
        return 1000 * percentile(self.latencies, share)


@dataclass
class ServerProcess:
    process: subprocess.Popen
    url: str  # http://host:port, as announced (0.0.0.0 becomes 127.0.0.1 to connect to)
    announced: str  # the first line the server printed


@contextlib.contextmanager
def server_process(
    command: list[str],
    log_path: str | os.PathLike,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike = ROOT,
) -> Iterator[ServerProcess]:
    """A prediction server started as ``command`` (e.g. ``python -m pipeline.serve --port 0``),
    stopped with SIGTERM at the end; yields where it listens, read from its first line."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=log, text=True
        )
    try:
        first_line = process.stdout.readline() if process.stdout else ""
        address = re.search(r"http://([\d.]+):(\d+)", first_line)
        if not address:
            raise RuntimeError(f"the server did not start: {first_line!r}; its log: {log_path}")
        host = "127.0.0.1" if address.group(1) == "0.0.0.0" else address.group(1)
        yield ServerProcess(process, f"http://{host}:{address.group(2)}", first_line)
    finally:
        stop(process)


def run_load(
    url: str, images: list[bytes], total: int, clients: int, malformed_every: int = 10
) -> LoadResult:
    """Send ``total`` requests from ``clients`` threads; one in ``malformed_every`` is malformed."""
    headers = {"Content-Type": "application/json"}
    expected = []
    for image in images:
        response = requests.post(url, data=request_body([image]), headers=headers, timeout=60)
        expected.append(response.json()["predictions"][0]["CLASSES"])
    result = LoadResult()
    lock = threading.Lock()
    counter = iter(range(total))

    def client() -> None:
        session = requests.Session()
        for index in iter(lambda: next(counter, None), None):
            malformed = index % malformed_every == 0
            body = (
                MALFORMED_BODIES[index % len(MALFORMED_BODIES)]
                if malformed
                else request_body([images[index % len(images)]])
            )
            started = time.perf_counter()
            response = session.post(url, data=body, headers=headers, timeout=60)
            latency = time.perf_counter() - started
            try:
                payload = response.json()
            except ValueError:
                payload = None
            with lock:
                result.latencies.append(latency)
                result.statuses[response.status_code] += 1
                if malformed:
                    result.non_json_errors += payload is None or "error" not in payload
                elif (
                    payload is None
                    or payload["predictions"][0]["CLASSES"] != expected[index % len(images)]
                ):
                    result.wrong_answers += 1

    result.seconds = run_in_threads(client, clients)
    return result


def report(result: LoadResult) -> str:
    return (
        f"{len(result.latencies)} requests in {result.seconds:.1f} s: "
        f"{result.requests_per_second:.0f} requests/s, p50 {result.percentile_ms(0.5):.1f} ms, "
        f"p99 {result.percentile_ms(0.99):.1f} ms, "
        f"statuses {dict(sorted(result.statuses.items()))}, wrong answers {result.wrong_answers}, "
        f"malformed without JSON error {result.non_json_errors}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_load", description=__doc__)
    parser.add_argument("--url", required=True, help="the endpoint's :predict URL")
    parser.add_argument("--images", required=True, type=Path, help="folder of JPEG/PNG images")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args(argv)
    images = [
        p.read_bytes()
        for p in sorted(args.images.rglob("*"))
        if p.suffix.lower() in {".jpg", ".jpeg", ".png"}
    ][:32]
    result = run_load(args.url, images, args.requests, args.clients)
    print(report(result))
    failed = (
        result.wrong_answers or result.non_json_errors or any(s >= 500 for s in result.statuses)
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
