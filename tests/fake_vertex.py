"""A fake Vertex AI API on loopback that the real aiplatform SDK talks to over gRPC with TLS.

It keeps just enough state (models and versions, endpoints with deployed models and traffic,
pipeline jobs, schedules) for the SDK's own follow-up calls to make sense, and records every
request so tests assert on what the SDK actually sent. ``fail(method, code, ...)`` makes the
next calls of ``method`` answer with those gRPC status codes; ``fail_after`` does so after
carrying the call out (an answer lost on the way back); ``hold(method)`` leaves the next
long-running ``method`` running for ever.
"""

from __future__ import annotations

import datetime
import itertools
import re
import threading
from collections import defaultdict
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from google.cloud import aiplatform_v1 as v1
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, empty_pb2

_SERVICE = "google.cloud.aiplatform.v1."


def _display_name_filter(text: str) -> str | None:
    match = re.search(r'display_name="([^"]*)"', text or "")
    return match.group(1) if match else None


class FakeVertex:
    """State, request log and gRPC handlers of the fake API."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, Any]] = []
        self.failures: dict[str, list[grpc.StatusCode]] = defaultdict(list)
        self.failures_after: dict[str, list[grpc.StatusCode]] = defaultdict(list)
        self.held: set[str] = set()
        self.models: dict[str, list[v1.Model]] = {}
        self.endpoints: dict[str, v1.Endpoint] = {}
        self.pipeline_jobs: dict[str, v1.PipelineJob] = {}
        self.pipeline_final_state = v1.PipelineState.PIPELINE_STATE_SUCCEEDED
        self.schedules: dict[str, v1.Schedule] = {}
        self._ids = itertools.count(1001)
        self._lock = threading.Lock()

    def calls(self, method: str) -> list[Any]:
        """The requests of ``method`` received so far, in order."""
        return [request for name, request in self.requests if name == method]

    def methods(self) -> list[str]:
        return [name for name, _ in self.requests]

    def fail(self, method: str, *codes: grpc.StatusCode) -> None:
        self.failures[method].extend(codes)

    def fail_after(self, method: str, *codes: grpc.StatusCode) -> None:
        self.failures_after[method].extend(codes)

    def hold(self, method: str) -> None:
        self.held.add(method)

    def _now(self) -> datetime.datetime:
        # Strictly increasing, so that resources created in one test have distinct times.
        return datetime.datetime(2026, 11, 21, tzinfo=datetime.timezone.utc) + datetime.timedelta(
            seconds=next(self._ids)
        )

    # Model service
    def upload_model(self, request: v1.UploadModelRequest) -> v1.UploadModelResponse:
        model = v1.Model(request.model)
        if request.parent_model:
            model_name = request.parent_model
            versions = self.models[model_name.rsplit("/", 1)[-1]]
        else:
            model_name = f"{request.parent}/models/{next(self._ids)}"
            versions = self.models.setdefault(model_name.rsplit("/", 1)[-1], [])
        model.name = model_name
        model.create_time = versions[0].create_time if versions else self._now()
        model.version_create_time = self._now()
        model.version_id = str(len(versions) + 1)
        model.supported_deployment_resources_types = [
            v1.Model.DeploymentResourcesType.DEDICATED_RESOURCES
        ]
        for version in versions:
            version.version_aliases = [
                a for a in version.version_aliases if a not in model.version_aliases
            ]
        versions.append(model)
        return v1.UploadModelResponse(model=model_name, model_version_id=model.version_id)

    def _model(self, name: str) -> v1.Model:
        model_name, _, version_id = name.partition("@")
        versions = self.models.get(model_name.rsplit("/", 1)[-1])
        if not versions:
            raise KeyError(name)
        if not version_id:
            return next(v for v in versions if "default" in v.version_aliases)
        return next(v for v in versions if version_id in (v.version_id, *v.version_aliases))

    def get_model(self, request: v1.GetModelRequest) -> v1.Model:
        return self._model(request.name)

    def list_models(self, request: v1.ListModelsRequest) -> v1.ListModelsResponse:
        wanted = _display_name_filter(request.filter)
        models = [self._model(versions[0].name) for versions in self.models.values()]
        return v1.ListModelsResponse(
            models=[m for m in models if wanted is None or m.display_name == wanted]
        )

    def list_model_versions(
        self, request: v1.ListModelVersionsRequest
    ) -> v1.ListModelVersionsResponse:
        versions = self.models[request.name.rsplit("/", 1)[-1]]
        return v1.ListModelVersionsResponse(
            models=[v1.Model(v, name=f"{v.name}@{v.version_id}") for v in versions]
        )

    # Endpoint service
    def create_endpoint(self, request: v1.CreateEndpointRequest) -> v1.Endpoint:
        endpoint = v1.Endpoint(request.endpoint)
        endpoint.name = f"{request.parent}/endpoints/{next(self._ids)}"
        endpoint.create_time = self._now()
        self.endpoints[endpoint.name] = endpoint
        return endpoint

    def get_endpoint(self, request: v1.GetEndpointRequest) -> v1.Endpoint:
        return self.endpoints[request.name]

    def list_endpoints(self, request: v1.ListEndpointsRequest) -> v1.ListEndpointsResponse:
        wanted = _display_name_filter(request.filter)
        return v1.ListEndpointsResponse(
            endpoints=[
                e for e in self.endpoints.values() if wanted is None or e.display_name == wanted
            ]
        )

    def deploy_model(self, request: v1.DeployModelRequest) -> v1.DeployModelResponse:
        endpoint = self.endpoints[request.endpoint]
        deployed = v1.DeployedModel(request.deployed_model)
        deployed.id = str(next(self._ids))
        model = self._model(deployed.model)
        deployed.model, deployed.model_version_id = model.name, model.version_id
        split = {deployed.id if k == "0" else k: v for k, v in request.traffic_split.items()}
        endpoint.deployed_models.append(deployed)
        _check_split(endpoint, split or {deployed.id: 100})
        endpoint.traffic_split = split or {deployed.id: 100}
        return v1.DeployModelResponse(deployed_model=deployed)

    def update_endpoint(self, request: v1.UpdateEndpointRequest) -> v1.Endpoint:
        endpoint = self.endpoints[request.endpoint.name]
        if "traffic_split" in request.update_mask.paths:
            _check_split(endpoint, dict(request.endpoint.traffic_split))
            endpoint.traffic_split = dict(request.endpoint.traffic_split)
        return endpoint

    def undeploy_model(self, request: v1.UndeployModelRequest) -> v1.UndeployModelResponse:
        endpoint = self.endpoints[request.endpoint]
        split = dict(request.traffic_split) or dict(endpoint.traffic_split)
        if split.get(request.deployed_model_id, 0) and len(endpoint.deployed_models) > 1:
            # As Vertex AI: a deployed model that still takes traffic is not undeployed.
            raise ValueError(f"{request.deployed_model_id} still has traffic {split}")
        kept = [d for d in endpoint.deployed_models if d.id != request.deployed_model_id]
        del endpoint.deployed_models[:]
        endpoint.deployed_models.extend(kept)
        split.pop(request.deployed_model_id, None)
        endpoint.traffic_split = split
        return v1.UndeployModelResponse()

    # Pipeline service
    def create_pipeline_job(self, request: v1.CreatePipelineJobRequest) -> v1.PipelineJob:
        job = v1.PipelineJob(request.pipeline_job)
        job.name = f"{request.parent}/pipelineJobs/{request.pipeline_job_id or next(self._ids)}"
        job.state = v1.PipelineState.PIPELINE_STATE_RUNNING
        self.pipeline_jobs[job.name] = job
        return job

    def get_pipeline_job(self, request: v1.GetPipelineJobRequest) -> v1.PipelineJob:
        job = self.pipeline_jobs[request.name]
        job.state = self.pipeline_final_state
        if job.state == v1.PipelineState.PIPELINE_STATE_FAILED:
            job.error.message = "step train failed: out of memory"
        return job

    # Schedule service
    def create_schedule(self, request: v1.CreateScheduleRequest) -> v1.Schedule:
        schedule = v1.Schedule(request.schedule)
        schedule.name = f"{request.parent}/schedules/{next(self._ids)}"
        schedule.state = v1.Schedule.State.ACTIVE
        self.schedules[schedule.name] = schedule
        return schedule

    def get_schedule(self, request: v1.GetScheduleRequest) -> v1.Schedule:
        return self.schedules[request.name]

    def list_schedules(self, request: v1.ListSchedulesRequest) -> v1.ListSchedulesResponse:
        wanted = _display_name_filter(request.filter)
        return v1.ListSchedulesResponse(
            schedules=[
                s for s in self.schedules.values() if wanted is None or s.display_name == wanted
            ]
        )

    def update_schedule(self, request: v1.UpdateScheduleRequest) -> v1.Schedule:
        stored = self.schedules[request.schedule.name]
        for path in request.update_mask.paths:
            setattr(stored, path, getattr(request.schedule, path))
        return stored

    def _set_state(self, name: str, state: v1.Schedule.State) -> empty_pb2.Empty:
        self.schedules[name].state = state
        return empty_pb2.Empty()

    def pause_schedule(self, request: v1.PauseScheduleRequest) -> empty_pb2.Empty:
        return self._set_state(request.name, v1.Schedule.State.PAUSED)

    def resume_schedule(self, request: v1.ResumeScheduleRequest) -> empty_pb2.Empty:
        return self._set_state(request.name, v1.Schedule.State.ACTIVE)

    def delete_schedule(self, request: v1.DeleteScheduleRequest) -> empty_pb2.Empty:
        del self.schedules[request.name]
        return empty_pb2.Empty()

    # Operations: only held ones are ever asked about, and they never finish.
    def get_operation(self, request: operations_pb2.GetOperationRequest) -> Any:
        return operations_pb2.Operation(name=request.name, done=False)

    def _handler(self, method: str, implementation: Callable, long_running: bool) -> Callable:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            with self._lock:
                self.requests.append((method, request))
                if self.failures[method]:
                    code = self.failures[method].pop(0)
                    context.abort(code, f"fake Vertex AI refused {method}")
                try:
                    response = implementation(request)
                except (KeyError, StopIteration):
                    context.abort(grpc.StatusCode.NOT_FOUND, f"fake Vertex AI: not found: {method}")
                except ValueError as error:
                    context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"fake Vertex AI: {error}")
                if self.failures_after[method]:
                    code = self.failures_after[method].pop(0)
                    context.abort(code, f"fake Vertex AI lost the answer of {method}")
            if not long_running:
                return response
            name = f"operations/{next(self._ids)}"
            if method in self.held:
                self.held.discard(method)
                return operations_pb2.Operation(name=name, done=False)
            payload = any_pb2.Any()
            payload.Pack(
                response if isinstance(response, empty_pb2.Empty) else type(response).pb(response)
            )
            return operations_pb2.Operation(name=name, done=True, response=payload)

        return handle

    def generic_handlers(self) -> list[grpc.GenericRpcHandler]:
        """One handler per service, built from the request types: no generated servicers."""
        table = {
            "ModelService": [
                ("UploadModel", v1.UploadModelRequest, self.upload_model, True),
                ("GetModel", v1.GetModelRequest, self.get_model, False),
                ("ListModels", v1.ListModelsRequest, self.list_models, False),
                ("ListModelVersions", v1.ListModelVersionsRequest, self.list_model_versions, False),
            ],
            "EndpointService": [
                ("CreateEndpoint", v1.CreateEndpointRequest, self.create_endpoint, True),
                ("GetEndpoint", v1.GetEndpointRequest, self.get_endpoint, False),
                ("ListEndpoints", v1.ListEndpointsRequest, self.list_endpoints, False),
                ("UpdateEndpoint", v1.UpdateEndpointRequest, self.update_endpoint, False),
                ("DeployModel", v1.DeployModelRequest, self.deploy_model, True),
                ("UndeployModel", v1.UndeployModelRequest, self.undeploy_model, True),
            ],
            "PipelineService": [
                ("CreatePipelineJob", v1.CreatePipelineJobRequest, self.create_pipeline_job, False),
                ("GetPipelineJob", v1.GetPipelineJobRequest, self.get_pipeline_job, False),
            ],
            "ScheduleService": [
                ("CreateSchedule", v1.CreateScheduleRequest, self.create_schedule, False),
                ("GetSchedule", v1.GetScheduleRequest, self.get_schedule, False),
                ("ListSchedules", v1.ListSchedulesRequest, self.list_schedules, False),
                ("UpdateSchedule", v1.UpdateScheduleRequest, self.update_schedule, False),
                ("PauseSchedule", v1.PauseScheduleRequest, self.pause_schedule, False),
                ("ResumeSchedule", v1.ResumeScheduleRequest, self.resume_schedule, False),
                ("DeleteSchedule", v1.DeleteScheduleRequest, self.delete_schedule, True),
            ],
        }
        handlers = [
            grpc.method_handlers_generic_handler(
                "google.longrunning.Operations",
                {
                    "GetOperation": grpc.unary_unary_rpc_method_handler(
                        self._handler("GetOperation", self.get_operation, False),
                        request_deserializer=operations_pb2.GetOperationRequest.FromString,
                        response_serializer=_serializer,
                    )
                },
            )
        ]
        for service, methods in table.items():
            rpcs = {}
            for method, request_type, implementation, long_running in methods:
                rpcs[method] = grpc.unary_unary_rpc_method_handler(
                    self._handler(method, implementation, long_running),
                    request_deserializer=request_type.deserialize,
                    response_serializer=_serializer,
                )
            handlers.append(grpc.method_handlers_generic_handler(_SERVICE + service, rpcs))
        return handlers


def _check_split(endpoint: v1.Endpoint, split: dict[str, int]) -> None:
    """Vertex AI's rules: shares of deployed models only, adding up to 100."""
    deployed = {d.id for d in endpoint.deployed_models}
    if set(split) - deployed or sum(split.values()) != 100:
        raise ValueError(f"invalid traffic split {split} for deployed models {sorted(deployed)}")


def _serializer(message: Any) -> bytes:
    if hasattr(message, "SerializeToString"):
        return message.SerializeToString()
    return type(message).serialize(message)


def start_server(fake: FakeVertex, cert_path: Path, key_path: Path) -> tuple[grpc.Server, int]:
    """Serve ``fake`` with TLS on a free loopback port; returns the server and the port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    for handler in fake.generic_handlers():
        server.add_generic_rpc_handlers((handler,))
    credentials = grpc.ssl_server_credentials([(key_path.read_bytes(), cert_path.read_bytes())])
    port = server.add_secure_port("localhost:0", credentials)
    server.start()
    return server, port
