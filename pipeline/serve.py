"""``python -m pipeline.serve``: the prediction server, locally and in the serving container.

With Vertex AI's custom container variables (``AIP_STORAGE_URI``, ``AIP_HTTP_PORT``,
``AIP_PREDICT_ROUTE``, ``AIP_HEALTH_ROUTE``; or ``--model-dir``) it serves that one model;
without them, the endpoints that local pipeline runs deployed, on Vertex's REST path. The server
itself lives in ``components.lib.serving``; this module only reads the command line and the
environment, and imports nothing heavy before it has to (``--help`` needs no TensorFlow).
"""

from __future__ import annotations

import argparse
import os
import sys

from components.lib.serving.batching import DEFAULT_BATCHING, BatchingConfig
from components.lib.serving.protocol import DEFAULT_LIMITS, ServingLimits
from components.lib.serving.routing import (
    CONTAINER_HEALTH_ROUTE,
    CONTAINER_PORT,
    CONTAINER_PREDICT_ROUTE,
    ContainerModel,
)
from components.lib.targets.local import LocalEndpoints, default_state_dir

CONTAINER_ENV = ("AIP_STORAGE_URI", "AIP_HTTP_PORT", "AIP_PREDICT_ROUTE", "AIP_HEALTH_ROUTE")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    limits, batching = DEFAULT_LIMITS, DEFAULT_BATCHING
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.serve",
        description="Serve image classification on Vertex AI's prediction protocol. In a "
        "serving container (AIP_STORAGE_URI set) or with --model-dir: that one model, on "
        "AIP_PREDICT_ROUTE / AIP_HEALTH_ROUTE (default /predict, /health) at AIP_HTTP_PORT "
        "(default 8080) on 0.0.0.0. Otherwise the endpoints that `python -m pipeline.run "
        "--local` deployed, on POST /v1/projects/{p}/locations/{l}/endpoints/{e}:predict. "
        "Also: a page to try the model at /, /openapi.json, /metrics.",
    )
    parser.add_argument(
        "--model-dir", help="serve this one model (a folder or gs://); default: $AIP_STORAGE_URI"
    )
    parser.add_argument(
        "--state-dir",
        default=default_state_dir(),
        help="folder of the local registry and endpoints (%(default)s)",
    )
    parser.add_argument(
        "--host",
        help="address to bind (default: 0.0.0.0 with AIP_* variables, else 127.0.0.1: this "
        "machine only)",
    )
    parser.add_argument(
        "--port",
        type=int,
        help=f"port (default: $AIP_HTTP_PORT, else {CONTAINER_PORT}; 0 = any free port)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=limits.max_body_bytes,
        help="larger request bodies get HTTP 413 (%(default)s)",
    )
    parser.add_argument(
        "--max-instances",
        type=int,
        default=limits.max_instances,
        help="requests with more instances get HTTP 400 (%(default)s)",
    )
    parser.add_argument(
        "--batching",
        action=argparse.BooleanOptionalAction,
        default=batching.enabled,
        help="join requests that arrive together into one model call (default: on)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=batching.max_batch_size,
        help="most instances in one model call (%(default)s)",
    )
    parser.add_argument(
        "--batch-timeout-ms",
        type=float,
        default=batching.timeout_ms,
        help="longest a batch's first request waits for others to join (%(default)s ms)",
    )
    parser.add_argument(
        "--max-concurrent-batches",
        type=int,
        default=batching.max_concurrent_batches,
        help="model calls that may run at once (%(default)s)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    in_container = any(os.environ.get(name) for name in CONTAINER_ENV)
    model_dir = args.model_dir or os.environ.get("AIP_STORAGE_URI")
    host = args.host or ("0.0.0.0" if in_container else "127.0.0.1")
    port = (
        args.port if args.port is not None else int(os.environ.get("AIP_HTTP_PORT", CONTAINER_PORT))
    )
    try:
        limits = ServingLimits(args.max_body_bytes, args.max_instances)
        batching = BatchingConfig(
            args.batching, args.max_batch_size, args.batch_timeout_ms, args.max_concurrent_batches
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from components.lib.serving.app import create_app
    from components.lib.serving.server import ServerSettings, listening_socket, serve

    if model_dir:
        source = ContainerModel(
            model_dir,
            os.environ.get("AIP_PREDICT_ROUTE", CONTAINER_PREDICT_ROUTE),
            os.environ.get("AIP_HEALTH_ROUTE", CONTAINER_HEALTH_ROUTE),
            os.environ.get("AIP_DEPLOYED_MODEL_ID", ""),
        )
        paths = [source.predict_route]
        what = f"the model at {model_dir}"
    else:
        source = LocalEndpoints(args.state_dir)
        paths = [f"/v1/{name}:predict" for name in source.endpoint_names()]
        what = f"the local endpoints of {os.path.abspath(args.state_dir)}"
    try:
        sock = listening_socket(host, port)
    except OSError as error:
        print(f"error: cannot listen on {host}:{port}: {error}", file=sys.stderr)
        return 1

    def announce(bound_host: str, bound_port: int) -> None:
        base = f"http://{bound_host}:{bound_port}"
        print(f"serving {what} on {base}  (try it: {base}/)", flush=True)
        for path in paths:
            print(f"predict: POST {base}{path}", flush=True)
        if not paths:
            print("no endpoint deployed yet: run `python -m pipeline.run --local`", flush=True)

    app = create_app(source, limits, batching)
    return serve(app, sock, ServerSettings(host, port), announce)


if __name__ == "__main__":
    sys.exit(main())
