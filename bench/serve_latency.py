"""Serving: the old ``http.server`` endpoint against the new ASGI server, without and with
dynamic batching, at 1 and 8 concurrent clients.

Three servers answer the same model, each ``python -m pipeline.serve`` in its own process on
loopback: the old one (``pipeline/serve.py`` as of ``--old-ref``, taken from git history with
the library it ran on), the new one with ``--no-batching`` and the new one with batching (its
defaults). Each client keeps its connection alive (as an SDK does) and sends one photo per request
as Vertex JSON, the next as soon as it has an answer. The servers take turns: every round measures
each server at 1 and then 8 clients, each round starting with the next server, so that other work
on the machine slows all of them alike. Every answer must name the class the old server names.
Figures: p50/p99 latency and images/s per server and client count. Targets: at 8 clients,
batching at least doubles the images/s of the unbatched server; at 1 client its p50 is no worse
than the old server's. Last, 8 clients with one request in ten malformed against the batching
server: no 5xx, every answer right (``bench/serve_load.py``). And, with the servers stopped, the
model alone in this process: images/s of one-image calls one at a time, of eight such calls at
once (what the unbatched server runs under 8 clients) and of eight-image calls (what batching
makes of them): the most that batching can gain over concurrent calls on this machine. And a lone
client's requests through the batcher and straight to a worker thread, around a stand-in call of
20 ms: what the batcher itself adds to the latency of a request that has no company.

Without ``--model-dir`` a small model is trained first, in a subprocess (the demo dataset, head
only, one epoch, at the pipeline's default image size: the beer model's graph and cost).

    python -m bench.serve_latency [--model-dir DIR] [--images DIR] [--requests 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.common import (
    Target,
    finish,
    format_table,
    percentile,
    progress,
    ratio,
    run_in_threads,
)
from bench.serve_load import ROOT, request_body, run_load, server_process

OLD_SERVER_REF = "5632518"  # the last commit whose pipeline/serve.py was the http.server one
OLD, UNBATCHED, BATCHED = "old (http.server)", "new, no batching", "new, batching"
NEW_SERVER_ARGS = {UNBATCHED: ["--no-batching"], BATCHED: []}
CLIENTS = (1, 8)
TARGET_BATCHING_SPEEDUP = 2.0
TARGET_P50_RATIO = 1.0
PROJECT, LOCATION = "bench-project", "europe-west1"
MODEL_NAME, ENDPOINT_NAME = "bench-model", "bench-endpoint"


@dataclass
class Cell:
    """Requests of one server at one number of clients, over every round."""

    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    wrong_answers: int = 0
    round_p50_ms: list[float] = field(default_factory=list)

    @property
    def p50_ms(self) -> float:
        return 1000 * percentile(self.latencies, 0.5)

    @property
    def p99_ms(self) -> float:
        return 1000 * percentile(self.latencies, 0.99)

    @property
    def images_per_second(self) -> float:
        return ratio(len(self.latencies), self.seconds)


Results = dict[tuple[str, int], Cell]


def train_small_model(work_dir: str, image_size: int) -> str:
    """A model of the pipeline's architecture, trained briefly on the demo dataset, exported
    under ``work_dir``; returns its folder."""
    from components.lib.data.demo import make_demo_dataset
    from components.lib.data.records import preprocess_dataset
    from components.lib.modelling.model import (
        TrainingConfig,
        export_serving_model,
        train_classifier,
    )

    data_dir = make_demo_dataset(os.path.join(work_dir, "demo-data"))
    dataset = preprocess_dataset(data_dir, os.path.join(work_dir, "records"), image_size)
    trained = train_classifier(dataset, TrainingConfig(epochs=1, fine_tune_epochs=0))
    model_dir = os.path.join(work_dir, "model")
    export_serving_model(trained.model, dataset.class_names, image_size, model_dir)
    return model_dir


def train_in_subprocess(work_dir: str, image_size: int) -> str:
    """``train_small_model`` in its own process, so that no TensorFlow runtime lingers in the
    process that runs the clients."""
    command = [sys.executable, "-m", "bench.serve_latency", "--train-in", work_dir]
    subprocess.run([*command, "--image-size", str(image_size)], cwd=ROOT, check=True)
    return os.path.join(work_dir, "model")


def deploy_locally(model_dir: str, state_dir: str) -> str:
    """Register and deploy ``model_dir`` as a local run would; returns the :predict path."""
    from components.lib.targets.base import resource_id
    from components.lib.targets.local import EndpointRegistry, ModelRegistry

    version = ModelRegistry(state_dir, PROJECT, LOCATION).upload_version(
        MODEL_NAME, model_dir, {}, {}
    )
    EndpointRegistry(state_dir, PROJECT, LOCATION).deploy(ENDPOINT_NAME, version)
    _absolute_paths(state_dir)
    return (
        f"/v1/projects/{PROJECT}/locations/{LOCATION}/endpoints/"
        f"{resource_id(ENDPOINT_NAME)}:predict"
    )


def _absolute_paths(state_dir: str) -> None:
    """The registry keeps paths relative to the state folder, which the old server (a commit from
    before) took as they are: give it the absolute paths it reads, which the new one reads too."""
    import json

    root = os.path.abspath(state_dir)

    def absolute(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                key: os.path.join(root, value)
                if key in ("artifactUri", "sourceUri")
                and isinstance(value, str)
                and value
                and not os.path.isabs(value)
                and "://" not in value
                else absolute(value)
                for key, value in node.items()
            }
        if isinstance(node, list):
            return [absolute(item) for item in node]
        return node

    for path in Path(state_dir).rglob("*.json"):
        path.write_text(json.dumps(absolute(json.loads(path.read_text()))))


def deployed_model(
    work: str, model_dir: Path | None, images_dir: Path | None, image_size: int
) -> tuple[str, str, str, list[bytes]]:
    """``model_dir`` (default: a small model trained under ``work``) deployed in a state folder
    under ``work``, and up to 32 request photos from ``images_dir`` (default: the demo photos):
    ``(model_dir, state_dir, predict_path, images)``."""
    if model_dir is None:
        progress(f"training a small model at {image_size}x{image_size} ...")
        model = train_in_subprocess(work, image_size)
    else:
        model = str(model_dir)
    if images_dir is None:
        from components.lib.data.demo import make_demo_dataset

        images_dir = Path(make_demo_dataset(os.path.join(work, "demo"))) / "eval"
    state_dir = os.path.join(work, "state")
    return model, state_dir, deploy_locally(model, state_dir), read_images(images_dir, 32)


def old_server_tree(ref: str, destination: str) -> str:
    """``pipeline/`` and ``components/`` as of ``ref``, from this repository's git history."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", ref, "pipeline", "components"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(destination, filter="data")
    return destination


@contextmanager
def servers(state_dir: str, work: str, old_ref: str) -> Iterator[dict[str, str]]:
    """The three servers, started side by side; ``{name: base URL}``."""
    command = [sys.executable, "-m", "pipeline.serve", "--port", "0", "--state-dir", state_dir]
    with ExitStack() as stack:
        old_tree = old_server_tree(old_ref, os.path.join(work, "old-server"))
        env = {**os.environ, "PYTHONPATH": old_tree}
        urls = {
            OLD: stack.enter_context(
                server_process(command, os.path.join(work, "old.log"), env=env, cwd=old_tree)
            ).url
        }
        for name, args in NEW_SERVER_ARGS.items():
            log = os.path.join(work, f"{name.replace(' ', '').replace(',', '-')}.log")
            urls[name] = stack.enter_context(server_process([*command, *args], log)).url
        yield urls


def answer_classes(url: str, path: str, images: list[bytes]) -> list[int]:
    """The class of each image, one request each, over one connection."""
    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=300)
    classes = []
    for image in images:
        connection.request(
            "POST", path, request_body([image]), {"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        payload = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"{url}: HTTP {response.status}: {payload}")
        classes.append(payload["predictions"][0]["CLASSES"])
    connection.close()
    return classes


def run_clients(
    url: str, path: str, images: list[bytes], expected: list[int], requests: int, clients: int
) -> Cell:
    """``requests`` single-image requests from ``clients`` threads, each on its own kept-alive
    connection, sending its next request as soon as it has an answer."""
    cell = Cell()
    lock = threading.Lock()
    counter = iter(range(requests))
    address = urlsplit(url)
    bodies = [request_body([image]) for image in images]
    headers = {"Content-Type": "application/json"}

    def client() -> None:
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=300)
        for index in iter(lambda: next(counter, None), None):
            started = time.perf_counter()
            connection.request("POST", path, bodies[index % len(bodies)], headers)
            response = connection.getresponse()
            payload = json.loads(response.read())
            latency = time.perf_counter() - started
            right = (
                response.status == 200
                and payload["predictions"][0]["CLASSES"] == expected[index % len(expected)]
            )
            with lock:
                cell.latencies.append(latency)
                cell.wrong_answers += not right
        connection.close()

    cell.seconds = run_in_threads(client, clients)
    return cell


def compare_servers(
    urls: dict[str, str], path: str, images: list[bytes], requests: int, rounds: int
) -> Results:
    """Every server at every client count, ``requests`` per cell and round, servers in turn;
    answers are checked against the first server's."""
    names = list(urls)
    expected = answer_classes(urls[names[0]], path, images)
    for name in names:  # warm up: load the model, trace, and batch at every size once
        answer_classes(urls[name], path, images)
        run_clients(urls[name], path, images, expected, 4 * max(CLIENTS), max(CLIENTS))
    results: Results = {(name, clients): Cell() for name in names for clients in CLIENTS}
    for round_index in range(rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            for clients in CLIENTS:
                measured = run_clients(urls[name], path, images, expected, requests, clients)
                cell = results[(name, clients)]
                cell.latencies += measured.latencies
                cell.seconds += measured.seconds
                cell.wrong_answers += measured.wrong_answers
                cell.round_p50_ms.append(measured.p50_ms)
        progress(f"  round {round_index + 1}/{rounds} done")
    return results


MODEL_ALONE = (
    "1 image per call, one call at a time",
    "1 image per call, 8 calls at once",
    "8 images per call, one call at a time",
)


def model_alone(model_dir: str, images: list[bytes], rounds: int, calls: int = 64) -> dict:
    """Images/s of the model's serving signature in this process, each way in turn per round."""
    from components.lib.serving.prediction import ServingModel

    model = ServingModel(model_dir)
    singles = [[images[i % len(images)]] for i in range(calls)]
    eights = [[images[(8 * i + j) % len(images)] for j in range(8)] for i in range(calls // 8)]

    def at_once(batches: list[list[bytes]], threads: int) -> None:
        pending = iter(batches)
        lock = threading.Lock()

        def worker() -> None:
            while True:
                with lock:
                    batch = next(pending, None)
                if batch is None:
                    return
                model.predict(batch)

        run_in_threads(worker, threads)

    ways = {
        MODEL_ALONE[0]: lambda: at_once(singles, 1),
        MODEL_ALONE[1]: lambda: at_once(singles, 8),
        MODEL_ALONE[2]: lambda: at_once(eights, 1),
    }
    for run in ways.values():  # warm up
        run()
    seconds = dict.fromkeys(ways, 0.0)
    for round_index in range(rounds):
        names = list(ways)
        for name in names[round_index % 3 :] + names[: round_index % 3]:
            started = time.perf_counter()
            ways[name]()
            seconds[name] += time.perf_counter() - started
    return {name: calls * rounds / total for name, total in seconds.items()}


LONE_REQUEST = ("through the batcher", "straight to a worker thread (no batching)")
STAND_IN_CALL_MS = 20  # about the beer model's own call on this machine


def batcher_cost(
    rounds: int, requests: int = 200, call_seconds: float = STAND_IN_CALL_MS / 1000
) -> dict[str, float]:
    """p50 ms of a lone client's requests through ``Batcher`` with the server's defaults, and
    straight to a worker thread as the unbatched server calls the model, around a stand-in
    model call of ``call_seconds`` (a sleep: it releases the GIL, as TensorFlow does). Their
    difference is what the batcher itself adds to a lone request, free of the model's noise."""
    import asyncio
    import statistics
    from types import SimpleNamespace

    from components.lib.serving.batching import DEFAULT_BATCHING, Batcher

    def predict(images: list[bytes]) -> SimpleNamespace:
        time.sleep(call_seconds)
        return SimpleNamespace(classes=[0] * len(images), probabilities=[[1.0]] * len(images))

    async def measure() -> dict[str, float]:
        batchers = {
            LONE_REQUEST[0]: Batcher(predict, DEFAULT_BATCHING),
            LONE_REQUEST[1]: Batcher(predict, replace(DEFAULT_BATCHING, enabled=False)),
        }
        latencies: dict[str, list[float]] = {name: [] for name in batchers}
        for _ in range(rounds):
            for name, batcher in batchers.items():
                for _ in range(requests):
                    started = time.perf_counter()
                    await batcher.predict([b"photo"])
                    latencies[name].append(time.perf_counter() - started)
        for batcher in batchers.values():
            await batcher.close()
        return {name: 1000 * statistics.median(values) for name, values in latencies.items()}

    return asyncio.run(measure())


def report(results: Results) -> tuple[str, list[Target]]:
    """A table of every cell, and the issue's targets."""
    rows = []
    for (name, clients), cell in results.items():
        old = results[(OLD, clients)]
        rows.append(
            (
                name,
                clients,
                f"{cell.p50_ms:.1f}",
                f"{cell.p99_ms:.1f}",
                f"{cell.images_per_second:.1f}",
                f"{ratio(cell.images_per_second, old.images_per_second):.2f}x",
            )
        )
    headers = ("server", "clients", "p50 ms", "p99 ms", "images/s", "images/s vs old")
    many = max(CLIENTS)
    targets = [
        Target(
            f"images/s at {many} clients, batching / no batching",
            ratio(
                results[(BATCHED, many)].images_per_second,
                results[(UNBATCHED, many)].images_per_second,
            ),
            TARGET_BATCHING_SPEEDUP,
            True,
            "x",
        ),
        Target(
            "p50 at 1 client, batching server / old server",
            ratio(results[(BATCHED, 1)].p50_ms, results[(OLD, 1)].p50_ms),
            TARGET_P50_RATIO,
            False,
            "x",
        ),
        Target(
            "answers unlike the old server's",
            sum(c.wrong_answers for c in results.values()),
            0,
            False,
        ),
    ]
    return format_table(headers, rows), targets


def read_images(folder: Path, limit: int) -> list[bytes]:
    """Up to ``limit`` JPEG/PNG files under ``folder``, spread over its sub-folders."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not paths:
        raise FileNotFoundError(f"no JPEG or PNG images under {folder}")
    step = max(1, len(paths) // limit)
    return [path.read_bytes() for path in paths[::step][:limit]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.serve_latency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model-dir", type=Path, help="an exported SavedModel (default: train a small one)"
    )
    parser.add_argument(
        "--images", type=Path, help="folder of JPEG/PNG request images (default: demo photos)"
    )
    parser.add_argument(
        "--image-size", type=int, default=224, help="of the model trained here (%(default)s)"
    )
    parser.add_argument(
        "--requests", type=int, default=200, help="requests per server, client count and round"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds (%(default)s)")
    parser.add_argument(
        "--old-ref", default=OLD_SERVER_REF, help="git commit of the old server (%(default)s)"
    )
    parser.add_argument("--train-in", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.train_in:  # the training subprocess that train_in_subprocess started
        train_small_model(args.train_in, args.image_size)
        return 0
    if min(args.requests, args.rounds) < 1:
        parser.error("--requests and --rounds must be at least 1")

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as work:
        model_dir, state_dir, path, images = deployed_model(
            work, args.model_dir, args.images, args.image_size
        )
        progress(f"starting the servers: {OLD} ({args.old_ref}), {UNBATCHED}, {BATCHED} ...")
        with servers(state_dir, work, args.old_ref) as urls:
            progress(
                f"timing {args.requests} requests per server and client count ({CLIENTS}), "
                f"{args.rounds} rounds"
            )
            results = compare_servers(urls, path, images, args.requests, args.rounds)
            progress("8 clients, one request in ten malformed, against the batching server ...")
            load = run_load(urls[BATCHED] + path, images, total=1000, clients=8)
        progress("the model alone, in this process ...")
        alone = model_alone(model_dir, images, args.rounds)
    progress(
        f"the batcher's own cost to a lone request, around a stand-in {STAND_IN_CALL_MS} ms call"
    )
    lone = batcher_cost(args.rounds)
    table, targets = report(results)
    print(table)
    per_round = [
        ratio(batched, old)
        for batched, old in zip(
            results[(BATCHED, 1)].round_p50_ms, results[(OLD, 1)].round_p50_ms, strict=True
        )
    ]
    print(
        "p50 at 1 client, batching / old, round by round: "
        + ", ".join(f"{value:.2f}x" for value in per_round)
    )
    print(
        format_table(("the model alone", "images/s"), [(k, f"{v:.1f}") for k, v in alone.items()])
    )
    print(
        format_table(
            (f"a lone request around a {STAND_IN_CALL_MS} ms stand-in call", "p50 ms"),
            [(k, f"{v:.3f}") for k, v in lone.items()],
        )
    )
    server_errors = sum(count for status, count in load.statuses.items() if status >= 500)
    print(
        f"malformed load: {dict(sorted(load.statuses.items()))}, wrong answers "
        f"{load.wrong_answers}, errors without JSON {load.non_json_errors}"
    )
    targets.append(
        Target(
            "5xx or wrong answers under malformed load",
            server_errors + load.wrong_answers,
            0,
            False,
        )
    )
    figures = {
        "model_dir": str(args.model_dir) if args.model_dir else "trained here (demo data)",
        "requests": args.requests,
        "rounds": args.rounds,
        "old_ref": args.old_ref,
        "cells": [
            {
                "server": name,
                "clients": clients,
                "p50_ms": cell.p50_ms,
                "p99_ms": cell.p99_ms,
                "images_per_second": cell.images_per_second,
                "wrong_answers": cell.wrong_answers,
            }
            for (name, clients), cell in results.items()
        ],
        "malformed_load_statuses": {str(k): v for k, v in load.statuses.items()},
        "model_alone_images_per_second": alone,
        "p50_ratio_1_client_by_round": per_round,
        "stand_in_call_ms": STAND_IN_CALL_MS,
        "lone_request_p50_ms_around_stand_in_call": lone,
    }
    return finish("serve_latency", figures, targets)


if __name__ == "__main__":
    sys.exit(main())
