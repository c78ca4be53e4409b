"""``python -m pipeline.serve``: a local endpoint server speaking Vertex AI's prediction REST API.

``POST /v1/projects/{p}/locations/{l}/endpoints/{e}:predict`` with ``{"instances": [...]}``
answers as a Vertex endpoint does; with a canary, each request goes to one deployed version,
drawn by the traffic split. The endpoint record is read on every request, so a version
that a pipeline run deploys is served at once, without a restart.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import sys
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from components.lib.serving.prediction import (
    BadRequestError,
    InvalidImageError,
    ServingModel,
    decode_instances,
)
from components.lib.targets.base import pick_deployment
from components.lib.targets.local import EndpointRegistry, ModelRegistry, default_state_dir

logger = logging.getLogger(__name__)

_PREDICT_PATH = re.compile(
    r"^/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
    r"/endpoints/(?P<endpoint_id>[^/:]+):predict$"
)


@dataclass(frozen=True)
class ServingLimits:
    """What one request may carry; larger ones are refused with HTTP 413 or 400."""

    max_body_bytes: int = 10 * 1024 * 1024
    max_instances: int = 256


class _ApiError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class LocalEndpointService:
    """Resolves an endpoint to its deployed model version and runs predictions on it."""

    def __init__(self, state_dir: str, limits: ServingLimits) -> None:
        self.state_dir = os.path.abspath(state_dir)
        self.limits = limits
        self._models: dict[str, ServingModel] = {}
        self._lock = threading.Lock()
        self._rng = random.Random()

    def _model(self, artifact_uri: str) -> ServingModel:
        with self._lock:
            if artifact_uri not in self._models:
                logger.info("loading %s", artifact_uri)
                self._models[artifact_uri] = ServingModel(artifact_uri)
            return self._models[artifact_uri]

    def predict(self, project: str, location: str, endpoint_id: str, body: bytes) -> dict[str, Any]:
        name = f"projects/{project}/locations/{location}/endpoints/{endpoint_id}"
        record = EndpointRegistry(self.state_dir, project, location).get(endpoint_id)
        if record is None or record["name"] != name:
            raise _ApiError(HTTPStatus.NOT_FOUND, f"endpoint {name} not found in {self.state_dir}")
        if not record.get("deployedModels"):
            raise _ApiError(HTTPStatus.BAD_REQUEST, f"endpoint {name} has no deployed model")
        images = decode_instances(body, self.limits.max_instances)
        deployed_id = pick_deployment(record["trafficSplit"], self._rng)
        deployed = next(model for model in record["deployedModels"] if model["id"] == deployed_id)
        version = ModelRegistry(self.state_dir, project, location).get_version(
            deployed["model"], deployed["modelVersionId"]
        )
        predictions = self._model(version.artifact_uri).predict(images)
        return {
            "predictions": [
                {"CLASSES": int(label), "PROBABILITIES": [float(p) for p in probabilities]}
                for label, probabilities in zip(
                    predictions.classes, predictions.probabilities, strict=True
                )
            ],
            "deployedModelId": deployed_id,
            "model": deployed["model"],
            "modelDisplayName": deployed["displayName"],
            "modelVersionId": deployed["modelVersionId"],
        }


def make_handler(service: LocalEndpointService) -> type[BaseHTTPRequestHandler]:
    """The request handler class bound to ``service``."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "local-vertex-endpoint"
        # Keep-alive: a client that reuses its connection (an SDK, requests.Session) skips the
        # TCP handshake and the new handler thread per request. Without Nagle's algorithm the
        # body, written after the headers, is not held back waiting for the client's ACK.
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True
        timeout = 60  # seconds an idle kept-alive connection holds its thread

        def log_message(self, format: str, *args: Any) -> None:
            logger.info("%s %s", self.address_string(), format % args)

        def _reply(self, status: HTTPStatus, payload: dict[str, Any], close: bool = False) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if close:  # also ends this connection after the reply
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: HTTPStatus, message: str, close: bool = False) -> None:
            """A JSON error; ``close`` when the request's body was left unread, since the
            connection cannot carry another request after it."""
            self._reply(
                status,
                {"error": {"code": status.value, "message": message, "status": status.phrase}},
                close,
            )

        def do_GET(self) -> None:
            if self.path in ("/health", "/healthz"):
                self._reply(HTTPStatus.OK, {"status": "ok", "stateDir": service.state_dir})
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no route GET {self.path}")

        def do_POST(self) -> None:
            match = _PREDICT_PATH.match(self.path)
            if not match:
                self._error(
                    HTTPStatus.NOT_FOUND,
                    f"no route POST {self.path}; predictions go to "
                    "/v1/projects/{project}/locations/{location}/endpoints/{endpoint}:predict",
                    close=True,
                )
                return
            if "Transfer-Encoding" in self.headers:
                self._error(
                    HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length", close=True
                )
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            if length < 0:
                self._error(HTTPStatus.BAD_REQUEST, "invalid Content-Length header", close=True)
                return
            max_body_bytes = service.limits.max_body_bytes
            if length > max_body_bytes:
                self._error(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"request body of {length} bytes is over the limit of {max_body_bytes}",
                    close=True,
                )
                return
            body = self.rfile.read(length)
            try:
                self._reply(HTTPStatus.OK, service.predict(**match.groupdict(), body=body))
            except _ApiError as error:
                self._error(error.status, str(error))
            except (BadRequestError, InvalidImageError) as error:
                self._error(HTTPStatus.BAD_REQUEST, str(error))
            except Exception as error:
                logger.exception("prediction failed")
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"prediction failed: {error}")

    return Handler


def make_server(
    state_dir: str,
    host: str = "127.0.0.1",
    port: int = 8080,
    limits: ServingLimits = ServingLimits(),
) -> ThreadingHTTPServer:
    """A threaded HTTP server for the endpoints of ``state_dir``; ``port=0`` picks a free port."""
    handler = make_handler(LocalEndpointService(state_dir, limits))
    return ThreadingHTTPServer((host, port), handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.serve",
        description="Serve the local endpoints that `python -m pipeline.run --local` deployed, "
        "on Vertex AI's REST prediction path "
        "POST /v1/projects/{p}/locations/{l}/endpoints/{e}:predict.",
    )
    parser.add_argument("--port", type=int, default=8080, help="port (%(default)s; 0 = any free)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (%(default)s: this machine only)"
    )
    parser.add_argument(
        "--state-dir", default=default_state_dir, help="folder of a local run (%(default)s)"
    )
    defaults = ServingLimits()
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=defaults.max_body_bytes,
        help="larger request bodies get HTTP 413 (%(default)s)",
    )
    parser.add_argument(
        "--max-instances",
        type=int,
        default=defaults.max_instances,
        help="requests with more instances get HTTP 400 (%(default)s)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        limits = ServingLimits(args.max_body_bytes, args.max_instances)
        server = make_server(args.state_dir, args.host, args.port, limits)
    except OSError as error:
        print(f"error: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    host, port = server.server_address[:2]
    print(
        f"serving the local endpoints of {os.path.abspath(args.state_dir)} on http://{host}:{port}",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
