"""Serving: the local endpoint over HTTP versus the SavedModel's serving signature in-process.

The same exported model answers three ways: ``ServingModel.predict`` called directly in this
process (what the endpoint does inside), and ``python -m pipeline.serve`` in its own process,
called over loopback with Vertex's JSON body (base64 images), one request at a time, over one
kept-alive connection (as an SDK or ``requests.Session`` calls) and over a new connection per
request (as ``curl`` does). The calls take turns, each way in each round, so that other work on
the machine slows all of them alike. Single images give latency (p50, p99); batched requests
(``--batch-size`` instances) give images/s. Every HTTP answer must name the same classes as
the direct call. The target (HTTP adds at most 20% at p50) is on the kept-alive client.

Without ``--model-dir`` a small model is trained first, in a subprocess (the demo dataset, head
only, one epoch, at the pipeline's default image size), so the script runs on its own.

    python -m bench.serve_latency [--model-dir DIR] [--images DIR] [--requests 200]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import Target, finish, format_table, percentile, progress, ratio
from bench.serve_load import request_body

TARGET_P50_OVERHEAD = 1.20
PROJECT, LOCATION = "bench-project", "europe-west1"
MODEL_NAME, ENDPOINT_NAME = "bench-model", "bench-endpoint"
ROOT = Path(__file__).resolve().parent.parent

Predict = Callable[[list[bytes]], list[int]]


@dataclass
class Timings:
    """Seconds per call of one way of predicting: single images, and batches."""

    batch_size: int
    single_s: list[float] = field(default_factory=list)
    batch_s: list[float] = field(default_factory=list)

    @property
    def p50_ms(self) -> float:
        return 1000 * percentile(self.single_s, 0.5)

    @property
    def p99_ms(self) -> float:
        return 1000 * percentile(self.single_s, 0.99)

    @property
    def batch_images_per_second(self) -> float:
        return ratio(self.batch_size * len(self.batch_s), sum(self.batch_s))


DIRECT = "direct"
KEPT_ALIVE = "http kept-alive"
NEW_CONNECTION = "http new connection"


@dataclass
class Comparison:
    """Timings of each way of predicting, and how many HTTP answers differed from direct ones."""

    timings: dict[str, Timings]
    mismatches: int = 0

    def p50_ratio(self, way: str) -> float:
        return ratio(self.timings[way].p50_ms, self.timings[DIRECT].p50_ms)

    def batch_throughput_ratio(self, way: str) -> float:
        return ratio(
            self.timings[way].batch_images_per_second,
            self.timings[DIRECT].batch_images_per_second,
        )


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
    """``train_small_model`` in its own process, so that the process measuring the direct calls
    holds the loaded model alone, as the server's does, not what training left behind."""
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
    return (
        f"/v1/projects/{PROJECT}/locations/{LOCATION}/endpoints/"
        f"{resource_id(ENDPOINT_NAME)}:predict"
    )


@contextlib.contextmanager
def local_endpoint_server(state_dir: str, log_path: str) -> Iterator[tuple[str, int]]:
    """``python -m pipeline.serve`` on a free loopback port, as a user starts it; (host, port)."""
    command = [sys.executable, "-m", "pipeline.serve", "--port", "0", "--state-dir", state_dir]
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        first_line = server.stdout.readline() if server.stdout else ""
        address = re.search(r"http://([\d.]+):(\d+)", first_line)
        if not address:
            raise RuntimeError(f"the server did not start; its log: {log_path}")
        yield address.group(1), int(address.group(2))
    finally:
        server.terminate()
        server.wait(timeout=30)


def http_predictor(host: str, port: int, path: str, keep_alive: bool) -> Predict:
    """Predict through the endpoint, over one kept-alive connection (as an SDK or a
    ``requests.Session`` does) or over a new connection per request (as ``curl`` does)."""
    kept = http.client.HTTPConnection(host, port, timeout=120) if keep_alive else None

    def predict(images: list[bytes]) -> list[int]:
        connection = kept or http.client.HTTPConnection(host, port, timeout=120)
        try:
            connection.request(
                "POST", path, request_body(images), {"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            payload = json.loads(response.read())
        finally:
            if not keep_alive:
                connection.close()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {payload}")
        return [prediction["CLASSES"] for prediction in payload["predictions"]]

    return predict


def direct_predictor(model_dir: str) -> Predict:
    """Predict through the SavedModel's serving signature in this process."""
    from components.lib.serving.prediction import ServingModel

    model = ServingModel(model_dir)
    return lambda images: [int(label) for label in model.predict(images).classes]


def compare_predictors(
    ways: dict[str, Predict],
    images: list[bytes],
    single_requests: int,
    batch_requests: int,
    batch_size: int,
    warmup: int = 3,
) -> Comparison:
    """Time every way call by call, in turn, after ``warmup`` untimed calls of each shape (the
    first ones trace the graph and load the model). Each round starts with the next way, so no
    way always follows the same other one (and inherits its lingering CPU use). The first way is
    the reference whose answers the others must repeat."""
    comparison = Comparison({way: Timings(batch_size) for way in ways})
    names = list(ways)
    batch = [images[index % len(images)] for index in range(batch_size)]
    for _ in range(warmup):
        for predict in ways.values():
            predict(images[:1])
            predict(batch)

    total = single_requests + batch_requests
    for index in range(total):
        single = index < single_requests
        request = [images[index % len(images)]] if single else batch
        answers = {}
        for way in names[index % len(names) :] + names[: index % len(names)]:
            started = time.perf_counter()
            answers[way] = ways[way](request)
            seconds = time.perf_counter() - started
            timings = comparison.timings[way]
            (timings.single_s if single else timings.batch_s).append(seconds)
        comparison.mismatches += sum(answers[way] != answers[names[0]] for way in names[1:])
        if (index + 1) % 50 == 0 or index + 1 == total:
            progress(f"  {index + 1}/{total} rounds of requests")
    return comparison


def read_images(folder: Path, limit: int) -> list[bytes]:
    """Up to ``limit`` JPEG/PNG files under ``folder``, sorted by path."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not paths:
        raise FileNotFoundError(f"no JPEG or PNG images under {folder}")
    return [path.read_bytes() for path in paths[:limit]]


def report(comparison: Comparison) -> tuple[str, list[Target]]:
    """A table of every way's figures, and the issue's target: HTTP adds at most 20% at p50,
    for a client that keeps its connection (a new connection per request is shown beside)."""
    rows = [
        (
            way,
            f"{timings.p50_ms:.1f}",
            f"{timings.p99_ms:.1f}",
            f"{comparison.p50_ratio(way):.2f}",
            f"{timings.batch_images_per_second:.1f}",
            f"{comparison.batch_throughput_ratio(way):.2f}",
        )
        for way, timings in comparison.timings.items()
    ]
    batch = comparison.timings[DIRECT].batch_size
    headers = (
        "way",
        "p50 ms",
        "p99 ms",
        "p50 / direct",
        f"images/s ({batch}/request)",
        "images/s / direct",
    )
    targets = [
        Target(
            f"{KEPT_ALIVE} p50 / direct p50",
            comparison.p50_ratio(KEPT_ALIVE),
            TARGET_P50_OVERHEAD,
            False,
            "x",
        ),
        Target("http answers unlike direct ones", comparison.mismatches, 0, False),
    ]
    return format_table(headers, rows), targets


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
        "--requests", type=int, default=200, help="single-image requests (%(default)s)"
    )
    parser.add_argument("--batches", type=int, default=20, help="batched requests (%(default)s)")
    parser.add_argument(
        "--batch-size", type=int, default=32, help="instances per batched request (%(default)s)"
    )
    parser.add_argument("--train-in", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.train_in:  # the training subprocess that train_in_subprocess started
        train_small_model(args.train_in, args.image_size)
        return 0
    if min(args.requests, args.batches, args.batch_size) < 1:
        parser.error("--requests, --batches and --batch-size must be at least 1")

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as work:
        model_dir = str(args.model_dir) if args.model_dir else None
        if model_dir is None:
            progress(f"training a small model at {args.image_size}x{args.image_size} ...")
            model_dir = train_in_subprocess(work, args.image_size)
        if args.images:
            images = read_images(args.images, args.batch_size)
        else:
            from components.lib.data.demo import make_demo_dataset

            demo = Path(make_demo_dataset(os.path.join(work, "demo-data")))
            images = read_images(demo / "eval", args.batch_size)
        state_dir = os.path.join(work, "state")
        path = deploy_locally(model_dir, state_dir)
        progress("loading the model in this process and starting python -m pipeline.serve ...")
        direct = direct_predictor(model_dir)
        with local_endpoint_server(state_dir, os.path.join(work, "serve.log")) as (host, port):
            ways = {
                DIRECT: direct,
                KEPT_ALIVE: http_predictor(host, port, path, keep_alive=True),
                NEW_CONNECTION: http_predictor(host, port, path, keep_alive=False),
            }
            progress(
                f"timing {args.requests} single-image and {args.batches} batched requests "
                f"each way: {', '.join(ways)}"
            )
            comparison = compare_predictors(
                ways, images, args.requests, args.batches, args.batch_size
            )
    table, targets = report(comparison)
    print(table)
    added = {way: 100 * (comparison.p50_ratio(way) - 1) for way in (KEPT_ALIVE, NEW_CONNECTION)}
    print(
        f"HTTP adds {added[KEPT_ALIVE]:.1f}% at p50 for single images over a kept-alive "
        f"connection, {added[NEW_CONNECTION]:.1f}% with a new connection per request; batched "
        f"requests reach {comparison.batch_throughput_ratio(KEPT_ALIVE):.2f}x the direct images/s"
    )
    figures = {
        "model_dir": str(args.model_dir) if args.model_dir else "trained here (demo data)",
        "requests": args.requests,
        "batches": args.batches,
        "batch_size": args.batch_size,
        "ways": {
            way: {
                "p50_ms": timings.p50_ms,
                "p99_ms": timings.p99_ms,
                "p50_ratio": comparison.p50_ratio(way),
                "batch_images_per_second": timings.batch_images_per_second,
                "batch_throughput_ratio": comparison.batch_throughput_ratio(way),
            }
            for way, timings in comparison.timings.items()
        },
        "mismatches": comparison.mismatches,
    }
    return finish("serve_latency", figures, targets)


if __name__ == "__main__":
    sys.exit(main())
