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
from typing import NoReturn

from components.lib.monitoring.sampler import (
    MONITORING_URI_ENV,
    SamplingSettings,
    sampling_destination,
)
from components.lib.serving.batching import DEFAULT_BATCHING, BatchingConfig
from components.lib.serving.protocol import DEFAULT_LIMITS, ServingLimits
from components.lib.serving.routing import (
    CONTAINER_HEALTH_ROUTE,
    CONTAINER_PORT,
    CONTAINER_PREDICT_ROUTE,
    MODEL_DISPLAY_NAME_ENV,
    ContainerModel,
)
from components.lib.serving.server import DEFAULT_SERVER, ServerSettings
from components.lib.targets.local import LocalEndpoints, default_state_dir

CONTAINER_ENV = ("AIP_STORAGE_URI", "AIP_HTTP_PORT", "AIP_PREDICT_ROUTE", "AIP_HEALTH_ROUTE")


class SettingsError(ValueError):
    """A setting (flag or AIP_* variable) the server cannot start with."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, not the usage text: which flag is wrong and how."""
        self.exit(2, f"error: {message} (see --help)\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    limits, batching, server = DEFAULT_LIMITS, DEFAULT_BATCHING, DEFAULT_SERVER
    parser = _Parser(
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
        help="requests with more instances get HTTP 400 (%(default)s); a model call takes at "
        "most --max-batch-size of them, a larger request is split",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=limits.max_image_pixels,
        help="images whose header declares more pixels get HTTP 400, before decoding (%(default)s)",
    )
    parser.add_argument(
        "--max-image-side",
        type=int,
        default=limits.max_image_side,
        help="likewise for an image's width or height (%(default)s)",
    )
    parser.add_argument(
        "--max-header-bytes",
        type=int,
        default=server.max_header_bytes,
        help="a longer request line and headers get HTTP 400 and the connection closed "
        "(%(default)s)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=server.max_connections,
        help="open client connections at most; beyond, the one waiting longest on its client "
        "is closed (%(default)s)",
    )
    parser.add_argument(
        "--request-timeout-s",
        type=float,
        default=server.request_timeout_s,
        help="a connection that has not sent a whole request this long after connecting (or "
        "after its request's first byte) is closed (%(default)s)",
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
    sampling = SamplingSettings()
    parser.add_argument(
        "--sample-requests",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep a bounded sample of request embeddings and confidences for the drift monitor "
        "(`python -m pipeline.monitor`), written every --sample-interval-s under --sample-uri "
        "(default: on)",
    )
    parser.add_argument(
        "--sample-uri",
        help=f"where samples go, a folder or gs:// (default: ${MONITORING_URI_ENV}/"
        "$AIP_DEPLOYED_MODEL_ID in a serving container, which the model's upload sets; else "
        "<state-dir>/monitoring/<deployed model>)",
    )
    parser.add_argument(
        "--sample-size",
        type=int,
        default=sampling.capacity,
        help="predictions kept per window at most, whatever the traffic (%(default)s)",
    )
    parser.add_argument(
        "--sample-interval-s",
        type=float,
        default=sampling.interval_s,
        help="a window's length; each is written as one file (%(default)s s)",
    )
    parser.add_argument(
        "--sample-windows",
        type=int,
        default=sampling.keep_windows,
        help="newest windows kept; older files are deleted (%(default)s)",
    )
    parser.add_argument(
        "--sample-images",
        action="store_true",
        help="also store the sampled request images beside each window (off: no request image "
        "is ever stored)",
    )
    return parser.parse_args(argv)


def _sampling(args: argparse.Namespace, in_container: bool) -> SamplingSettings:
    """Where the server samples requests: ``--sample-uri``; in a container, the upload's
    ``$IMAGE_CLASSIFIER_MONITORING_URI`` per deployed model (none set: no sampling); locally, the
    state folder (per deployed model, or ``model`` for --model-dir)."""
    destination = ""
    if args.sample_requests:
        if args.sample_uri:
            destination = args.sample_uri
        elif in_container:
            root = os.environ.get(MONITORING_URI_ENV, "")
            deployed = os.environ.get("AIP_DEPLOYED_MODEL_ID", "") or "model"
            destination = sampling_destination(root, deployed) if root else ""
        else:
            destination = os.path.join(args.state_dir, "monitoring")
            if args.model_dir:
                destination = sampling_destination(destination, args.model_dir)
    return SamplingSettings(
        destination,
        args.sample_size,
        args.sample_interval_s,
        args.sample_windows,
        args.sample_images,
    )


def _env_port() -> int:
    value = os.environ.get("AIP_HTTP_PORT", str(CONTAINER_PORT))
    try:
        return int(value)
    except ValueError:
        raise SettingsError(f"AIP_HTTP_PORT must be a port number, not {value!r}") from None


def _env_route(name: str, default: str) -> str:
    route = os.environ.get(name) or default
    if not route.startswith("/"):
        raise SettingsError(f"{name} must be a path starting with '/', not {route!r}")
    return route


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    in_container = any(os.environ.get(name) for name in CONTAINER_ENV)
    model_dir = args.model_dir or os.environ.get("AIP_STORAGE_URI")
    host = args.host or ("0.0.0.0" if in_container else "127.0.0.1")
    try:
        settings = ServerSettings(
            host,
            args.port if args.port is not None else _env_port(),
            request_timeout_s=args.request_timeout_s,
            max_connections=args.max_connections,
            max_header_bytes=args.max_header_bytes,
        )
        limits = ServingLimits(
            args.max_body_bytes, args.max_instances, args.max_image_pixels, args.max_image_side
        )
        batching = BatchingConfig(
            args.batching, args.max_batch_size, args.batch_timeout_ms, args.max_concurrent_batches
        )
        sampling = _sampling(args, in_container)
        if model_dir:
            source: ContainerModel | LocalEndpoints = ContainerModel(
                model_dir,
                _env_route("AIP_PREDICT_ROUTE", CONTAINER_PREDICT_ROUTE),
                _env_route("AIP_HEALTH_ROUTE", CONTAINER_HEALTH_ROUTE),
                os.environ.get("AIP_DEPLOYED_MODEL_ID", ""),
                os.environ.get(MODEL_DISPLAY_NAME_ENV, ""),
            )
            paths = [source.predict_route]
            what = f"the model at {model_dir}"
        else:
            source = LocalEndpoints(args.state_dir)
            paths = [f"/v1/{name}:predict" for name in source.endpoint_names()]
            what = f"the local endpoints of {os.path.abspath(args.state_dir)}"
    except ValueError as error:  # SettingsError, CorruptRecordError, the settings' own checks
        print(f"error: {error}", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from components.lib.serving.app import create_app
    from components.lib.serving.server import listening_socket, serve

    try:
        sock = listening_socket(host, settings.port)
    except OSError as error:
        print(f"error: cannot listen on {host}:{settings.port}: {error}", file=sys.stderr)
        return 1

    def announce(bound_host: str, bound_port: int) -> None:
        base = f"http://{bound_host}:{bound_port}"
        print(f"serving {what} on {base}  (try it: {base}/)", flush=True)
        for path in paths:
            print(f"predict: POST {base}{path}", flush=True)
        if not paths:
            print("no endpoint deployed yet: run `python -m pipeline.run --local`", flush=True)

    app = create_app(source, limits, batching, sampling)
    return serve(app, sock, settings, announce)


if __name__ == "__main__":
    sys.exit(main())
