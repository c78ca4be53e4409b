"""The prediction server: Vertex AI's prediction protocol over HTTP, as an ASGI app (Starlette).

One app, two ways to find the model that answers:

- ``ContainerModel``: one model, from a folder or ``gs://`` (Vertex AI's custom container
  contract: ``AIP_STORAGE_URI``, ``AIP_PREDICT_ROUTE``, ``AIP_HEALTH_ROUTE``). It loads in the
  background once the app starts; health answers 503 until it has loaded, then 200.
- an ``EndpointRouter``: the local endpoints, on Vertex's REST path
  ``POST /v1/projects/{p}/locations/{l}/endpoints/{e}:predict``; every request asks the router
  which deployed version takes it (the traffic split), so a new deployment serves at once.

Both answer Vertex's JSON, through a dynamic batcher per loaded model, and add a page to try the
model in a browser (``/``), the OpenAPI description (``/openapi.json``) and Prometheus metrics
(``/metrics``). TensorFlow is imported only when the first model loads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http import HTTPStatus
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.schemas import SchemaGenerator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from components.lib.monitoring.sampler import (
    NO_SAMPLING,
    RequestSampler,
    SamplingSettings,
    sampling_destination,
)
from components.lib.serving.batching import DEFAULT_BATCHING, Batcher, BatchingConfig
from components.lib.serving.contract import CLASS_NAMES_FILE
from components.lib.serving.logs import FIELDS
from components.lib.serving.metrics import ServingMetrics
from components.lib.serving.protocol import (
    DEFAULT_LIMITS,
    BadRequestError,
    ServingLimits,
    decode_instances,
    error_body,
    prediction_rows,
)
from components.lib.serving.routing import (
    ContainerModel,
    Deployment,
    EndpointNotFoundError,
    EndpointRouter,
    NothingDeployedError,
)
from components.lib.storage import local_copy

logger = logging.getLogger(__name__)

MODEL_VERSION_HEADER = "X-Model-Version"
# What the log and the metrics record for a request whose client hung up before its answer
# (nginx's "client closed request"); nothing is sent.
CLIENT_CLOSED_REQUEST = 499
LOCAL_PREDICT_ROUTE = "/v1/projects/{project}/locations/{location}/endpoints/{endpoint_id}:predict"


class _ApiError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error(status: HTTPStatus, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(error_body(status, message), status.value, headers=headers)


@dataclass
class _LoadedModel:
    model: Any  # prediction.ServingModel; its module imports TensorFlow
    batcher: Batcher
    sampler: RequestSampler | None = None


def _load_serving_model(uri: str, with_embeddings: bool) -> Any:
    from components.lib.serving.prediction import ServingModel

    return ServingModel(uri, with_embeddings=with_embeddings)


def _sampled(predict: Any, sampler: RequestSampler) -> Any:
    """``predict`` that offers each model call's answer to ``sampler`` (in the worker thread)."""

    def predict_and_sample(images: list[bytes]) -> Any:
        outputs = predict(images)
        sampler.observe(outputs.embeddings, outputs.probabilities, images)
        return outputs

    return predict_and_sample


class _Models:
    """Models by artifact URI, each loaded once (in a worker thread) with its own batcher, and
    with ``sampling``, its own request sampler (``monitoring.sampler``): the container's under
    the destination itself, the local endpoints' under a folder per deployed version."""

    def __init__(
        self,
        batching: BatchingConfig,
        metrics: ServingMetrics,
        sampling: SamplingSettings,
        per_deployment: bool,
    ) -> None:
        self._batching = batching
        self._metrics = metrics
        self._sampling = sampling
        self._per_deployment = per_deployment
        self._loaded: dict[str, _LoadedModel] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def loaded(self, uri: str) -> _LoadedModel | None:
        return self._loaded.get(uri)

    async def get(self, deployment: Deployment) -> _LoadedModel:
        uri = deployment.artifact_uri
        if uri not in self._loaded:
            async with self._locks.setdefault(uri, asyncio.Lock()):
                if uri not in self._loaded:
                    logger.info("loading %s", uri, extra={FIELDS: {"artifactUri": uri}})
                    started = time.perf_counter()
                    sampling = bool(self._sampling.destination)
                    model = await asyncio.to_thread(_load_serving_model, uri, sampling)
                    version = deployment.version_label(model.fingerprint)
                    predict, sampler = model.predict, None
                    if sampling:
                        sampler = RequestSampler(self._sampler_settings(deployment, version))
                        predict = _sampled(predict, sampler)
                    batcher = Batcher(predict, self._batching, self._observe_batch)
                    self._loaded[uri] = _LoadedModel(model, batcher, sampler)
                    self._metrics.model_info.labels(version, deployment.deployed_model_id).set(1)
                    logger.info(
                        "loaded %s in %.1f s",
                        uri,
                        time.perf_counter() - started,
                        extra={FIELDS: {"artifactUri": uri, "modelVersion": version}},
                    )
        return self._loaded[uri]

    def _sampler_settings(self, deployment: Deployment, version: str) -> SamplingSettings:
        if not self._per_deployment:
            return self._sampling
        key = deployment.deployed_model_id or version.replace(":", "-")
        destination = sampling_destination(self._sampling.destination, key)
        return dataclasses.replace(self._sampling, destination=destination)

    def _observe_batch(self, size: int) -> None:
        self._metrics.batch_size.observe(size)

    async def flush_samples(self) -> None:
        """Write every sampler's window (a failed write is logged; serving goes on)."""
        for loaded in list(self._loaded.values()):
            if loaded.sampler:
                try:
                    await asyncio.to_thread(loaded.sampler.flush)
                except Exception:
                    logger.exception("the request sample could not be written")

    async def sample_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._sampling.interval_s)
            await self.flush_samples()

    async def close(self) -> None:
        for loaded in self._loaded.values():
            await loaded.batcher.close()
        await self.flush_samples()


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to be over ``limit`` bytes
    (by its Content-Length, or while a chunked body streams in)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _ApiError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"request body of {declared} bytes is over the limit of {limit}",
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _ApiError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"request body is over the limit of {limit} bytes",
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _require_json(request: Request) -> None:
    """415 unless the body is declared JSON: a web page cannot post that to another origin
    without the browser asking first (CORS), and this server never allows it."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise _ApiError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"Content-Type must be application/json, not {media_type[:100] or 'missing'}",
        )


class _Observe:
    """Every HTTP request counted, timed and logged as one JSON line (Cloud Logging's
    ``httpRequest`` fields), labelled by the route that answered it."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status, version = 500, ""

        async def observed_send(message: Message) -> None:
            nonlocal status, version
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name.decode().lower() == MODEL_VERSION_HEADER.lower():
                        version = value.decode()
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("route")
            handler = getattr(route, "name", None) or "none"
            self.metrics.observe_request(handler, status, seconds)
            fields: dict[str, Any] = {
                "httpRequest": {
                    "requestMethod": scope["method"],
                    "requestUrl": scope["path"],
                    "status": status,
                    "latency": f"{seconds:.6f}s",
                    "remoteIp": (scope.get("client") or ("", 0))[0],
                },
                "handler": handler,
            }
            if version:
                fields["modelVersion"] = version
            logger.info("%s %s %d", scope["method"], scope["path"], status, extra={FIELDS: fields})


def _page() -> str:
    return resources.files("components.lib.serving").joinpath("static/index.html").read_text()


def _class_names(artifact_uri: str) -> list[str]:
    with open(os.path.join(local_copy(artifact_uri), CLASS_NAMES_FILE)) as file:
        return json.load(file)


def create_app(
    source: ContainerModel | EndpointRouter,
    limits: ServingLimits = DEFAULT_LIMITS,
    batching: BatchingConfig = DEFAULT_BATCHING,
    sampling: SamplingSettings = NO_SAMPLING,
) -> Starlette:
    """The ASGI app serving ``source``; ``app.state.ready`` tells whether it can answer and
    ``app.state.load_error`` why a container's model failed to load. With a ``sampling``
    destination, each model's requests are sampled there for the drift monitor."""
    metrics = ServingMetrics()
    container = source if isinstance(source, ContainerModel) else None
    models = _Models(batching, metrics, sampling, per_deployment=container is None)
    router = None if container else source
    health_route = container.health_route if container else "/health"
    predict_route = container.predict_route if container else LOCAL_PREDICT_ROUTE

    def deployment_of(request: Request) -> Deployment:
        if container:
            return container.deployment()
        params = request.path_params
        try:
            return router.route(params["project"], params["location"], params["endpoint_id"])
        except EndpointNotFoundError as error:
            raise _ApiError(HTTPStatus.NOT_FOUND, str(error)) from None
        except NothingDeployedError as error:
            raise _ApiError(HTTPStatus.BAD_REQUEST, str(error)) from None

    async def predict(request: Request) -> Response:
        """
        summary: Predict the classes of images (Vertex AI's prediction request)
        description: >
          Body {"instances": [{"bytes": {"b64": "<base64 JPEG/PNG>"}}, ...]}. Answers
          {"predictions": [{"CLASSES": <class index>, "PROBABILITIES": [<one per class>]}],
          "deployedModelId", "model", "modelVersionId" (where known)}; the header X-Model-Version
          names the model version. Errors are JSON {"error": {"code", "message", "status"}}.
        requestBody:
          required: true
          content:
            application/json:
              schema: {$ref: '#/components/schemas/PredictRequest'}
        responses:
          200:
            description: one prediction per instance, in order
            content:
              application/json:
                schema: {$ref: '#/components/schemas/PredictResponse'}
          400: {description: malformed request, too many instances, an instance that is not
            an image or is over the pixel limits}
          404: {description: no such endpoint}
          405: {description: not a POST}
          413: {description: body over the size limit}
          415: {description: Content-Type is not application/json}
        """
        started = time.perf_counter()
        response, deployment = await answer(request)
        if deployment is not None:  # counted for the version that answered (the canary review)
            metrics.observe_prediction(
                deployment.deployed_model_id or "model",
                response.status_code,
                time.perf_counter() - started,
            )
        return response

    async def answer(request: Request) -> tuple[Response, Deployment | None]:
        """The answer, and the deployment that took the request (None: refused before)."""
        deployment = None
        try:
            _require_json(request)
            body = await _read_body(request, limits.max_body_bytes)
            deployment = deployment_of(request)
            images = decode_instances(body, limits)
            loaded = await models.get(deployment)
            classes, probabilities = await loaded.batcher.predict(images)
        except _ApiError as error:
            close = {"Connection": "close"} if error.status.value in (413, 415) else None
            return _error(error.status, str(error), close), deployment
        except BadRequestError as error:
            return _error(HTTPStatus.BAD_REQUEST, str(error)), deployment
        except ClientDisconnect:
            logger.info("the client closed the connection before its request was read")
            return Response(status_code=CLIENT_CLOSED_REQUEST), None  # the server sends nothing
        except Exception:
            # The detail (paths of the server's files among it) goes to the log, not the client.
            logger.exception("prediction failed")
            return _error(
                HTTPStatus.INTERNAL_SERVER_ERROR, "prediction failed; the server's log says why"
            ), deployment
        return JSONResponse(
            {
                "predictions": prediction_rows(classes, probabilities),
                **deployment.response_fields(),
            },
            headers={MODEL_VERSION_HEADER: deployment.version_label(loaded.model.fingerprint)},
        ), deployment

    async def health(request: Request) -> Response:
        """
        summary: Ready to predict?
        description: 200 once the model has loaded (a container), 503 before.
        responses:
          200: {description: ready}
          503: {description: still loading the model}
        """
        if not container:
            return JSONResponse({"status": "ok"})
        loaded = models.loaded(container.storage_uri)
        if loaded is None:
            return JSONResponse({"status": "loading"}, HTTPStatus.SERVICE_UNAVAILABLE.value)
        version = container.deployment().version_label(loaded.model.fingerprint)
        return JSONResponse(
            {"status": "ok", "modelVersion": version}, headers={MODEL_VERSION_HEADER: version}
        )

    async def list_models(request: Request) -> Response:
        """
        summary: What this server predicts with, for the page at /
        description: Each model's predict path and class names (index = CLASSES).
        responses:
          200: {description: '{"models": [{"name", "displayName", "predictPath", "classNames"}]}'}
        """
        if container:
            served = [("model", container.predict_route, container.deployment())]
        else:
            served = []
            for name in router.endpoint_names():
                _, project, _, location, _, endpoint_id = name.split("/")
                try:
                    deployment = router.route(project, location, endpoint_id)
                except NothingDeployedError:
                    continue
                served.append((name, f"/v1/{name}:predict", deployment))
        listed = []
        for name, path, deployment in served:
            class_names = await asyncio.to_thread(_class_names, deployment.artifact_uri)
            listed.append(
                {
                    "name": name,
                    "displayName": deployment.model_display_name,
                    "predictPath": path,
                    "classNames": class_names,
                }
            )
        return JSONResponse({"models": listed})

    async def page(request: Request) -> Response:
        """
        summary: A page to try the model with a photo
        responses:
          200: {description: HTML}
        """
        return HTMLResponse(page_html)

    async def openapi(request: Request) -> Response:
        """
        summary: This description
        responses:
          200: {description: OpenAPI 3 JSON}
        """
        return JSONResponse(schema)

    async def prometheus(request: Request) -> Response:
        """
        summary: Prometheus metrics
        description: requests, errors, latency, instances per model call, loaded model versions
        responses:
          200: {description: Prometheus text format}
        """
        return Response(metrics.exposition(), media_type=metrics.content_type)

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        status = HTTPStatus(error.status_code)
        message = f"no route {request.method} {request.url.path}"
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            allowed = sorted((error.headers or {}).get("Allow", "").split(", "))
            message = f"{request.url.path} takes {', '.join(allowed)}, not {request.method}"
        elif not container:
            message += f"; predictions go to POST {LOCAL_PREDICT_ROUTE}"
        return _error(status, message, error.headers)

    routes = [
        Route(predict_route, predict, methods=["POST"], name="predict"),
        Route(health_route, health, methods=["GET"], name="health"),
        Route("/", page, methods=["GET"], name="page"),
        Route("/models", list_models, methods=["GET"], name="models"),
        Route("/openapi.json", openapi, methods=["GET"], name="openapi"),
        Route("/metrics", prometheus, methods=["GET"], name="metrics"),
    ]
    schema = SchemaGenerator(
        {
            "openapi": "3.0.0",
            "info": {"title": "Image classifier prediction server", "version": "1"},
            "components": {"schemas": _SCHEMAS},
        }
    ).get_schema(routes)
    page_html = _page()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loading = sampler = None
        if container:
            loading = asyncio.create_task(_load_container_model(app, models, container))
        if sampling.destination:
            sampler = asyncio.create_task(models.sample_periodically())
        yield
        for task in (loading, sampler):
            if task:
                task.cancel()
        await models.close()

    app = Starlette(
        routes=routes,
        middleware=[Middleware(_Observe, metrics=metrics)],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    # /health/ would otherwise be redirected to a URL built from the request's Host header.
    app.router.redirect_slashes = False
    app.state.load_error = None
    app.state.on_load_error = None  # set by the server: what to do when the model cannot load
    return app


async def _load_container_model(app: Starlette, models: _Models, container: ContainerModel):
    try:
        await models.get(container.deployment())
    except Exception as error:
        logger.exception("the model at %s cannot be loaded", container.storage_uri)
        app.state.load_error = f"{container.storage_uri}: {error}"
        if app.state.on_load_error:
            app.state.on_load_error()


_SCHEMAS = {
    "PredictRequest": {
        "type": "object",
        "required": ["instances"],
        "properties": {
            "instances": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {
                        "bytes": {
                            "type": "object",
                            "properties": {"b64": {"type": "string", "format": "byte"}},
                        }
                    },
                },
            },
            "parameters": {"type": "object"},
        },
    },
    "PredictResponse": {
        "type": "object",
        "properties": {
            "predictions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "CLASSES": {"type": "integer"},
                        "PROBABILITIES": {"type": "array", "items": {"type": "number"}},
                    },
                },
            },
            "deployedModelId": {"type": "string"},
            "model": {"type": "string"},
            "modelDisplayName": {"type": "string"},
            "modelVersionId": {"type": "string"},
        },
    },
}
