"""The prediction server under attack: normal requests mixed with hostile ones, on loopback.

Two runs of ``--seconds`` each, each against a fresh ``python -m pipeline.serve`` at its default
limits: a clean one (``--clients`` clients sending one photo per request, each the next as soon
as it has an answer) and an attacked one, where every ``--attack-every``-th request of each
client is an attack instead, in turn:

- ``bomb``: images whose header declares too many pixels (a 20,000 x 20,000 PNG of 48 KB and a
  1,000,000 x 1 one); expected 400, before decoding;
- ``idle``: 100 connections that send nothing, left open (the server closes them at its
  connection cap or its request deadline);
- ``slow``: 20 connections that send half a request's headers and stop;
- ``header``: a request with a 1 MB header; expected 400 and the connection closed;
- ``instances``: 256 small photos in one request (expected 200, as model calls of at most the
  batch size) and then 257 (expected 400).

Figures: 5xx answers (target 0), the normal requests' p99 latency in the attacked run against the
clean run's (target within 2x), and each server's peak memory (the kernel's VmHWM of its process;
target: the attacked server's at most ``--memory-bound-mib``).

    python -m bench.serve_attacks [--model-dir DIR] [--images DIR] [--seconds 60] [--clients 8]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import io
import os
import resource
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image

from bench.common import MIB, Target, finish, percentile, progress, run_in_threads
from bench.serve_latency import deployed_model
from bench.serve_load import request_body, server_process

JSON = {"Content-Type": "application/json"}
ATTACKS = ("bomb", "idle", "slow", "header", "instances")
HELD_SOCKETS = 2000  # the attackers' open sockets at most; the oldest are closed beyond
MEMORY_BOUND_MIB = 2048


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class RunResult:
    normal_latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)  # (kind, status) -> count
    peak_rss_bytes: int = 0

    @property
    def server_errors(self) -> int:
        return sum(n for (_, status), n in self.statuses.items() if status >= 500)

    def p99_ms(self) -> float:
        return 1000 * percentile(self.normal_latencies, 0.99)


class Attacker:
    """The hostile requests, against ``host:port``; sockets it leaves open are held here."""

    def __init__(self, host: str, port: int, path: str, photo: bytes) -> None:
        self.host, self.port, self.path = host, port, path
        self.held: collections.deque[socket.socket] = collections.deque()
        self.lock = threading.Lock()
        self.bombs = request_body([png(20_000, 20_000), png(1_000_000, 1)])
        self.many = request_body([photo] * 256)
        self.too_many = request_body([photo] * 257)

    def attack(self, kind: str, post: Callable[[bytes], int]) -> list[int]:
        """Run one attack; the HTTP statuses it got (none for sockets left open)."""
        if kind == "bomb":
            return [post(self.bombs)]
        if kind == "instances":
            return [post(self.many), post(self.too_many)]
        if kind == "header":
            return [self._huge_header()]
        head = f"POST {self.path} HTTP/1.1\r\nHost: x\r\n".encode()  # and never the rest
        first_bytes = b"" if kind == "idle" else head
        for _ in range(100 if kind == "idle" else 20):
            self._hold(first_bytes)
        return []

    def _hold(self, first_bytes: bytes) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=5)
            if first_bytes:
                sock.sendall(first_bytes)
        except OSError:  # refused or reset: the server protects itself
            return
        with self.lock:
            self.held.append(sock)
            while len(self.held) > HELD_SOCKETS:
                self.held.popleft().close()

    def _huge_header(self) -> int:
        with socket.create_connection((self.host, self.port), timeout=30) as sock:
            # The server may answer and close before it has read it all.
            with contextlib.suppress(OSError):
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * MIB)
            answer = b""
            try:
                while chunk := sock.recv(65536):
                    answer += chunk
            except OSError:
                pass
        return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0

    def close(self) -> None:
        with self.lock:
            while self.held:
                self.held.popleft().close()


def run(
    url: str,
    path: str,
    images: list[bytes],
    seconds: float,
    clients: int,
    attack_every: int | None,
) -> RunResult:
    """``clients`` threads for ``seconds``; with ``attack_every``, that share of attacks."""
    address = urlsplit(url)
    attacker = Attacker(address.hostname, address.port, path, images[0])
    result = RunResult()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    bodies = [request_body([image]) for image in images]

    def client(index: int) -> None:
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)

        def post(body: bytes) -> int:
            nonlocal connection
            try:
                connection.request("POST", path, body, JSON)
                response = connection.getresponse()
                response.read()
                if response.getheader("Connection", "").lower() == "close":
                    connection.close()
                return response.status
            except (OSError, http.client.HTTPException):
                connection.close()  # closed by the server (idle too long): a new one
                connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
                return 0

        sent = 0
        while time.monotonic() < deadline:
            sent += 1
            if attack_every and sent % attack_every == 0:
                kind = ATTACKS[(sent // attack_every + index) % len(ATTACKS)]
                statuses = attacker.attack(kind, post)
                with lock:
                    result.statuses.update((kind, status) for status in statuses)
                continue
            started = time.perf_counter()
            status = post(bodies[sent % len(bodies)])
            latency = time.perf_counter() - started
            with lock:
                result.statuses["normal", status] += 1
                if status == 200:
                    result.normal_latencies.append(latency)
        connection.close()

    counter = iter(range(clients))
    run_in_threads(lambda: client(next(counter)), clients)
    attacker.close()
    return result


def serve_and_run(
    state_dir: str, path: str, images: list[bytes], log: str, **load: object
) -> RunResult:
    command = [sys.executable, "-m", "pipeline.serve", "--port", "0", "--state-dir", state_dir]
    with server_process(command, log) as server:
        for body in (request_body([images[0]]), request_body([images[0]] * 32)):
            status = _post_once(server.url, path, body)  # load the model, trace its graph
            assert status == 200, f"the server answers {status}; its log: {log}"
        result = run(server.url, path, images, **load)
        with open(f"/proc/{server.process.pid}/status") as status_file:
            for line in status_file:
                if line.startswith("VmHWM:"):
                    result.peak_rss_bytes = int(line.split()[1]) * 1024
    return result


def _post_once(url: str, path: str, body: bytes) -> int:
    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=600)
    connection.request("POST", path, body, JSON)
    status = connection.getresponse().status
    connection.close()
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.serve_attacks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model-dir", type=Path, help="an exported SavedModel (default: train)")
    parser.add_argument("--images", type=Path, help="folder of JPEG/PNG photos (default: demo)")
    parser.add_argument("--seconds", type=float, default=60.0, help="of each run (%(default)s)")
    parser.add_argument("--clients", type=int, default=8, help="(%(default)s)")
    parser.add_argument(
        "--attack-every", type=int, default=4, help="one request in this many (%(default)s)"
    )
    parser.add_argument("--memory-bound-mib", type=int, default=MEMORY_BOUND_MIB)
    args = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the attackers' held sockets

    with tempfile.TemporaryDirectory(prefix="bench-attacks-") as work:
        _, state_dir, path, images = deployed_model(work, args.model_dir, args.images, 224)
        load = {"seconds": args.seconds, "clients": args.clients}
        progress(f"clean: {args.clients} clients for {args.seconds:g} s ...")
        clean = serve_and_run(
            state_dir, path, images, os.path.join(work, "clean.log"), attack_every=None, **load
        )
        progress(f"attacked: one request in {args.attack_every} an attack ({', '.join(ATTACKS)})")
        attacked = serve_and_run(
            state_dir,
            path,
            images,
            os.path.join(work, "attacked.log"),
            attack_every=args.attack_every,
            **load,
        )
    for name, result in (("clean", clean), ("attacked", attacked)):
        print(
            f"{name}: {len(result.normal_latencies)} normal answers, p50 "
            f"{1000 * percentile(result.normal_latencies, 0.5):.0f} ms, p99 "
            f"{result.p99_ms():.0f} ms, server peak RSS {result.peak_rss_bytes / MIB:.0f} MiB, "
            f"statuses {dict(sorted(result.statuses.items()))}"
        )
    targets = [
        Target("5xx answers", clean.server_errors + attacked.server_errors, 0, at_least=False),
        Target(
            "attacked p99 / clean p99",
            attacked.p99_ms() / clean.p99_ms(),
            2.0,
            at_least=False,
        ),
        Target(
            "attacked server peak RSS",
            attacked.peak_rss_bytes / MIB,
            args.memory_bound_mib,
            at_least=False,
            unit=" MiB",
        ),
    ]
    figures = {
        name: {
            "normal_answers": len(result.normal_latencies),
            "p50_ms": 1000 * percentile(result.normal_latencies, 0.5),
            "p99_ms": result.p99_ms(),
            "peak_rss_mib": result.peak_rss_bytes / MIB,
            "statuses": {f"{kind} {status}": n for (kind, status), n in result.statuses.items()},
        }
        for name, result in (("clean", clean), ("attacked", attacked))
    }
    return finish("serve_attacks", figures, targets)


if __name__ == "__main__":
    sys.exit(main())
