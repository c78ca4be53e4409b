"""EndpointService and PredictionService: deploy, traffic, undeploy, predict, as Vertex AI does.

DeployModel starts the model's serving container (``serving.py``) on a copy of its artifacts and
fails its operation when the container cannot serve; the endpoint then keeps its traffic. A
traffic split must name deployed models (``"0"``: the one being deployed) and sum to 100. A
deployed model that still has traffic cannot be undeployed (FAILED_PRECONDITION) unless it is
the last one. One operation at a time changes an endpoint. Predictions pick a deployed model by
the traffic split and answer in Vertex AI's format.
"""

from __future__ import annotations

import random
import time
from typing import Any

import grpc
from google.api import httpbody_pb2
from google.cloud import aiplatform_v1 as v1
from google.protobuf import json_format

from tests.artifact_registry import ContainerImages
from tests.vertex_emulator.context import Context, now
from tests.vertex_emulator.iam import Iam
from tests.vertex_emulator.monitoring import PredictionMetrics
from tests.vertex_emulator.registry import ModelRegistry
from tests.vertex_emulator.resources import (
    ApiError,
    check_machine_spec,
    display_name_filter,
    invalid,
    not_found,
)
from tests.vertex_emulator.serving import (
    Container,
    ContainerRuntime,
    DeployError,
    ModelFiles,
    PredictError,
)

NEW_MODEL_KEY = "0"
PREDICT_LIMIT_BYTES = 1_572_864
"""Online prediction's request limit, 1.5 MB (gcloud ai endpoints predict's reference)."""


def request_too_large(size: int) -> ApiError:
    return invalid(
        f"Request payload size exceeds the limit: {PREDICT_LIMIT_BYTES} bytes (got {size}); "
        "send smaller images, e.g. resized to the model's input size."
    )


def _failed_precondition(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.FAILED_PRECONDITION, message)


def check_split(split: dict[str, int], known: set[str]) -> None:
    unknown = sorted(set(split) - known)
    if unknown:
        raise invalid(f"The following DeployedModel ID(s) {unknown} do not exist.")
    if any(not 0 <= share <= 100 for share in split.values()):
        raise invalid(f"Traffic split percentages must be 0..100, got {split}.")
    if split and sum(split.values()) != 100:
        raise invalid(f"The traffic split percentages must add up to 100, got {split}.")


class Endpoints:
    """State and RPCs of ``EndpointService`` and ``PredictionService``."""

    def __init__(
        self,
        context: Context,
        registry: ModelRegistry,
        runtime: ContainerRuntime,
        images: ContainerImages,
        iam: Iam,
        seed: int = 0,
    ) -> None:
        self.context = context
        self.images = images
        self.iam = iam
        self.registry = registry
        self.runtime = runtime
        self.endpoints: dict[str, v1.Endpoint] = {}
        self.containers: dict[str, Container] = {}
        self._busy: set[str] = set()
        self._random = random.Random(seed)
        self._files: dict[str, ModelFiles] = {}
        self.metrics = PredictionMetrics()  # what Cloud Monitoring reports of the predictions

    def _endpoint(self, name: str) -> v1.Endpoint:
        endpoint = self.endpoints.get(self.context.names.canonical(name))
        if endpoint is None:
            raise not_found(f"Endpoint {name}")
        return endpoint

    def _start(self, method: str, endpoint: str, metadata_type: type, work) -> Any:
        """A long-running change of ``endpoint``: refused while another one runs."""
        if endpoint in self._busy:
            raise _failed_precondition(
                f"Endpoint {endpoint} has an ongoing operation; retry when it has finished."
            )
        self._busy.add(endpoint)

        def run() -> Any:
            try:
                return work()
            finally:
                with self.context.lock:
                    self._busy.discard(endpoint)

        return self.context.operations.start(method, endpoint, metadata_type, run)

    # EndpointService
    def create_endpoint(self, request: v1.CreateEndpointRequest):
        parent = self.context.names.parent(request.parent)
        endpoint = v1.Endpoint(request.endpoint)
        if not endpoint.display_name:
            raise invalid("Endpoint.display_name is required.")
        endpoint.name = f"{parent}/endpoints/{request.endpoint_id or self.context.new_id()}"

        def work() -> v1.Endpoint:
            with self.context.lock:
                endpoint.create_time = endpoint.update_time = now()
                self.endpoints[endpoint.name] = endpoint
                return v1.Endpoint(endpoint)

        return self.context.operations.start(
            "CreateEndpoint", endpoint.name, v1.CreateEndpointOperationMetadata, work
        )

    def get_endpoint(self, request: v1.GetEndpointRequest) -> v1.Endpoint:
        with self.context.lock:
            return v1.Endpoint(self._endpoint(request.name))

    def list_endpoints(self, request: v1.ListEndpointsRequest) -> v1.ListEndpointsResponse:
        parent = self.context.names.parent(request.parent)
        wanted = display_name_filter(request.filter)
        with self.context.lock:
            found = [
                v1.Endpoint(e)
                for name, e in self.endpoints.items()
                if name.startswith(f"{parent}/") and wanted in (None, e.display_name)
            ]
        endpoints, token = self.context.page(found, request)
        return v1.ListEndpointsResponse(endpoints=endpoints, next_page_token=token)

    def update_endpoint(self, request: v1.UpdateEndpointRequest) -> v1.Endpoint:
        """Only ``traffic_split``, ``display_name``, ``description`` and ``labels`` change."""
        with self.context.lock:
            stored = self._endpoint(request.endpoint.name)
            paths = list(request.update_mask.paths)
            allowed = {"traffic_split", "display_name", "description", "labels"}
            if not paths or set(paths) - allowed:
                raise invalid(f"update_mask {paths} may name only {sorted(allowed)}.")
            if "traffic_split" in paths:
                split = dict(request.endpoint.traffic_split)
                check_split(split, {d.id for d in stored.deployed_models})
                if stored.deployed_models and not split:
                    raise invalid("The traffic split must add up to 100 while models are deployed.")
                stored.traffic_split = split
            for path in paths:
                if path != "traffic_split":
                    setattr(stored, path, getattr(request.endpoint, path))
            stored.update_time = now()
            return v1.Endpoint(stored)

    def deploy_model(self, request: v1.DeployModelRequest):
        with self.context.lock:
            endpoint = self._endpoint(request.endpoint)
            deployed = v1.DeployedModel(request.deployed_model)
            version = self.registry.version(deployed.model)
            resources = deployed.dedicated_resources
            check_machine_spec(
                resources.machine_spec, "DeployedModel.dedicated_resources.machine_spec"
            )
            self.iam.require_act_as(deployed.service_account)
            if resources.min_replica_count < 1 or (
                resources.max_replica_count
                and resources.max_replica_count < resources.min_replica_count
            ):
                raise invalid(
                    f"Replica counts must satisfy 1 <= min ({resources.min_replica_count}) <= "
                    f"max ({resources.max_replica_count})."
                )
            split = dict(request.traffic_split)
            check_split(split, {NEW_MODEL_KEY, *(d.id for d in endpoint.deployed_models)})
            deployed.id = self.context.new_id()
            deployed.model, deployed.model_version_id = version.name, version.version_id
            name = endpoint.name

        def work() -> v1.DeployModelResponse:
            if problem := self.images.missing(version.container_spec.image_uri):
                raise _failed_precondition(f"Failed to deploy {version.name}: {problem}")
            container = self._serve(deployed.id, version)
            with self.context.lock:
                stored = self.endpoints[name]
                deployed.create_time = now()
                stored.deployed_models.append(deployed)
                self.containers[deployed.id] = container
                if split:
                    stored.traffic_split = {
                        (deployed.id if key == NEW_MODEL_KEY else key): share
                        for key, share in split.items()
                    }
                stored.update_time = now()
            return v1.DeployModelResponse(deployed_model=deployed)

        with self.context.lock:
            return self._start("DeployModel", name, v1.DeployModelOperationMetadata, work)

    def _serve(self, deployed_id: str, version: v1.Model) -> Container:
        """The model server of ``version`` on its own copy of the artifacts."""
        storage = self.context.storage
        if storage is None or not version.artifact_uri:
            raise _failed_precondition("The emulator needs the GCS emulator to deploy models.")
        files = ModelFiles(storage, version.artifact_uri, deployed_id)
        try:
            container = self.runtime.start(version.container_spec, files)
        except DeployError as error:
            files.remove()
            raise _failed_precondition(
                f"Model server never became ready for {version.name}@{version.version_id}: {error}"
            ) from None
        self._files[deployed_id] = files
        return container

    def undeploy_model(self, request: v1.UndeployModelRequest):
        with self.context.lock:
            endpoint = self._endpoint(request.endpoint)
            ids = [d.id for d in endpoint.deployed_models]
            if request.deployed_model_id not in ids:
                raise not_found(f"DeployedModel {request.deployed_model_id} of {endpoint.name}")
            split = dict(request.traffic_split) or dict(endpoint.traffic_split)
            check_split(split, set(ids))
            if split.get(request.deployed_model_id) and len(ids) > 1:
                raise _failed_precondition(
                    f"DeployedModel {request.deployed_model_id} has traffic assigned "
                    f"({split[request.deployed_model_id]}%); update the traffic split so it "
                    "gets none before undeploying it."
                )
            split.pop(request.deployed_model_id, None)
            name = endpoint.name

        def work() -> v1.UndeployModelResponse:
            with self.context.lock:
                stored = self.endpoints[name]
                kept = [d for d in stored.deployed_models if d.id != request.deployed_model_id]
                del stored.deployed_models[:]
                stored.deployed_models.extend(kept)
                stored.traffic_split = split if kept else {}
                stored.update_time = now()
                container = self.containers.pop(request.deployed_model_id, None)
                files = self._files.pop(request.deployed_model_id, None)
            if container is not None:
                container.stop()
            if files is not None:
                files.remove()
            return v1.UndeployModelResponse()

        with self.context.lock:
            return self._start("UndeployModel", name, v1.UndeployModelOperationMetadata, work)

    # PredictionService
    def _route(self, endpoint_name: str) -> tuple[v1.DeployedModel, Container]:
        with self.context.lock:
            endpoint = self._endpoint(endpoint_name)
            split = {k: v for k, v in endpoint.traffic_split.items() if v > 0}
            if not split:
                raise _failed_precondition(f"Endpoint {endpoint.name} doesn't have traffic_split.")
            chosen = self._random.choices(list(split), weights=list(split.values()))[0]
            deployed = next(d for d in endpoint.deployed_models if d.id == chosen)
            return v1.DeployedModel(deployed), self.containers[chosen]

    def predict_json(self, endpoint_name: str, instances: list[Any], parameters: Any) -> dict:
        """A prediction in Vertex AI's REST format (also the basis of the gRPC answer)."""
        deployed, container = self._route(endpoint_name)
        started = time.perf_counter()
        try:
            predictions = container.predict(instances, parameters)
        except PredictError as error:
            self._observe(endpoint_name, deployed, started, failed=True)
            code = grpc.StatusCode.INVALID_ARGUMENT if error.invalid else grpc.StatusCode.INTERNAL
            raise ApiError(code, f"{error}") from None
        self._observe(endpoint_name, deployed, started, failed=False)
        return {
            "predictions": predictions,
            "deployedModelId": deployed.id,
            "model": deployed.model,
            "modelDisplayName": self.registry.version(deployed.model).display_name,
            "modelVersionId": deployed.model_version_id,
        }

    def predict(self, request: v1.PredictRequest) -> v1.PredictResponse:
        raw = v1.PredictRequest.pb(request)
        if raw.ByteSize() > PREDICT_LIMIT_BYTES:
            raise request_too_large(raw.ByteSize())
        instances = [json_format.MessageToDict(value) for value in raw.instances]
        parameters = (
            json_format.MessageToDict(raw.parameters) if raw.HasField("parameters") else None
        )
        answer = self.predict_json(request.endpoint, instances, parameters)
        response = v1.PredictResponse.pb(
            v1.PredictResponse(
                deployed_model_id=answer["deployedModelId"],
                model=answer["model"],
                model_display_name=answer["modelDisplayName"],
                model_version_id=answer["modelVersionId"],
            )
        )
        for prediction in answer["predictions"]:
            json_format.ParseDict(prediction, response.predictions.add())
        return response

    def raw_predict_bytes(self, endpoint_name: str, body: bytes, content_type: str):
        deployed, container = self._route(endpoint_name)
        started = time.perf_counter()
        try:
            data, answer_type = container.raw_predict(body, content_type)
        except PredictError as error:
            self._observe(endpoint_name, deployed, started, failed=True)
            code = grpc.StatusCode.INVALID_ARGUMENT if error.invalid else grpc.StatusCode.INTERNAL
            raise ApiError(code, f"{error}") from None
        self._observe(endpoint_name, deployed, started, failed=False)
        return data, answer_type, deployed

    def _observe(
        self, endpoint_name: str, deployed: v1.DeployedModel, started: float, failed: bool
    ) -> None:
        canonical = self.context.names.canonical(endpoint_name)
        self.metrics.record(canonical, deployed.id, failed, time.perf_counter() - started)

    def raw_predict(self, request: v1.RawPredictRequest) -> httpbody_pb2.HttpBody:
        body = request.http_body
        if len(body.data) > PREDICT_LIMIT_BYTES:
            raise request_too_large(len(body.data))
        data, content_type, _ = self.raw_predict_bytes(
            request.endpoint, body.data, body.content_type or "application/json"
        )
        return httpbody_pb2.HttpBody(content_type=content_type, data=data)

    def stop(self) -> None:
        """Stop every model server (the emulator is shutting down)."""
        with self.context.lock:
            containers, self.containers = list(self.containers.values()), {}
            files, self._files = list(self._files.values()), {}
        for container in containers:
            container.stop()
        for copy in files:
            copy.remove()
