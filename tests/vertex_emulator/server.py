"""The emulator: the services over gRPC with TLS (what the aiplatform SDK speaks), predictions
also over REST (what ``gcloud ai endpoints predict`` and plain HTTP clients speak), and Cloud
Monitoring's ``timeSeries.list`` of the prediction metrics (``monitoring.py``).

Every request is recorded (``calls``). Faults: ``fail(method, *codes)`` answers the next calls
of ``method`` with those status codes before doing anything; ``fail_after(method, code)`` does
the call's work and then answers with the error, as when a reply is lost on the way back;
``hold(method)`` and ``operations.fail(method, code, message)`` make the next long-running
operations of ``method`` never finish, or end in that error. Methods the emulator does not serve
are answered UNIMPLEMENTED and listed in ``unimplemented``.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from google.cloud import aiplatform_v1 as v1
from google.longrunning import operations_pb2

from components.images import PLACEHOLDERS
from tests.artifact_registry import ContainerImages
from tests.vertex_emulator.batch_prediction import BatchPredictionJobs
from tests.vertex_emulator.context import Context
from tests.vertex_emulator.custom_jobs import CustomJobs
from tests.vertex_emulator.endpoints import PREDICT_LIMIT_BYTES, Endpoints, request_too_large
from tests.vertex_emulator.iam import Iam
from tests.vertex_emulator.metadata import Metadata
from tests.vertex_emulator.operations import Operations
from tests.vertex_emulator.pipelines import Pipelines
from tests.vertex_emulator.registry import ModelRegistry
from tests.vertex_emulator.resources import ApiError, Names
from tests.vertex_emulator.serving import ContainerRuntime
from tests.vertex_emulator.storage import CloudStorage
from tests.vertex_emulator.tuning import TuningJobs

_V1 = "google.cloud.aiplatform.v1."
_REST_PREDICT = re.compile(
    r"^/v1/(?P<endpoint>projects/[^/]+/locations/[^/]+/endpoints/[^/:]+):(?P<verb>predict|rawPredict)$"
)
_REST_TIME_SERIES = re.compile(r"^/v3/projects/(?P<project>[^/]+)/timeSeries$")
_REST_TEST_IAM = re.compile(
    r"^/v1/projects/[^/]+/serviceAccounts/(?P<account>[^/:]+):testIamPermissions$"
)
# The permission each call needs, for PERMISSION_DENIED messages as the real service words them.
_PERMISSIONS = {
    "UploadModel": "aiplatform.models.upload",
    "GetModel": "aiplatform.models.get",
    "ListModels": "aiplatform.models.list",
    "ImportModelEvaluation": "aiplatform.modelEvaluations.import",
    "ListModelEvaluations": "aiplatform.modelEvaluations.list",
    "CreateEndpoint": "aiplatform.endpoints.create",
    "GetEndpoint": "aiplatform.endpoints.get",
    "ListEndpoints": "aiplatform.endpoints.list",
    "DeployModel": "aiplatform.endpoints.deploy",
    "UndeployModel": "aiplatform.endpoints.undeploy",
    "Predict": "aiplatform.endpoints.predict",
    "CreatePipelineJob": "aiplatform.pipelineJobs.create",
    "CreateBatchPredictionJob": "aiplatform.batchPredictionJobs.create",
    "CreateSchedule": "aiplatform.schedules.create",
    "CreateHyperparameterTuningJob": "aiplatform.hyperparameterTuningJobs.create",
    "CreateCustomJob": "aiplatform.customJobs.create",
    "GetHyperparameterTuningJob": "aiplatform.hyperparameterTuningJobs.get",
}


@dataclass(frozen=True)
class Rpc:
    service: str
    method: str
    request_type: Any
    implementation: Callable[[Any], Any]


class VertexEmulator:
    """State, faults, request log and servers of one emulated Vertex AI."""

    def __init__(
        self,
        projects: Sequence[str] = ("test-project",),
        storage: CloudStorage | None = None,
        operation_delay_s: float = 0.5,
        custom_images: dict[str, Sequence[str]] | None = None,
        seed: int = 0,
        images: ContainerImages | None = None,
        iam: Iam | None = None,
    ) -> None:
        names = Names(projects)
        self.context = Context(names, Operations(operation_delay_s, names), storage)
        self.operations = self.context.operations
        # What Artifact Registry holds (tests push the images they use) and who may act as
        # which service account.
        self.images = images or ContainerImages()
        self.iam = iam or Iam()
        self.registry = ModelRegistry(self.context, self.images)
        runtime = ContainerRuntime(custom_images)
        self.endpoint_service = Endpoints(
            self.context, self.registry, runtime, self.images, self.iam, seed
        )
        self.batch_jobs = BatchPredictionJobs(self.context, self.registry, runtime)
        self.metadata = Metadata(self.context)
        self.pipelines = Pipelines(self.context, self.metadata)
        self.tuning = TuningJobs(self.context, self.iam, PLACEHOLDERS.gpu, seed)
        self.custom_jobs = CustomJobs(self.context, self.iam)
        self.requests: list[tuple[str, Any]] = []
        self.unimplemented: list[str] = []
        self._failures: dict[str, list[grpc.StatusCode]] = defaultdict(list)
        self._failures_after: dict[str, list[grpc.StatusCode]] = defaultdict(list)
        self._log_lock = threading.Lock()
        self._grpc: grpc.Server | None = None
        self._rest: ThreadingHTTPServer | None = None
        self.port = self.rest_port = 0

    # What tests read and inject
    def calls(self, method: str) -> list[Any]:
        """The requests of ``method`` received so far, in order."""
        with self._log_lock:
            return [request for name, request in self.requests if name == method]

    def methods(self) -> list[str]:
        with self._log_lock:
            return [name for name, _ in self.requests]

    def fail(self, method: str, *codes: grpc.StatusCode) -> None:
        """The next calls of ``method`` are refused with ``codes``, one each, doing nothing."""
        self._failures[method].extend(codes)

    def fail_after(self, method: str, *codes: grpc.StatusCode) -> None:
        """The next calls of ``method`` take effect, then answer ``codes`` (a lost reply)."""
        self._failures_after[method].extend(codes)

    def hold(self, method: str, count: int = 1) -> None:
        """The next ``count`` long-running operations of ``method`` never finish."""
        self.operations.hold(method, count)

    @property
    def endpoints(self) -> dict[str, v1.Endpoint]:
        return self.endpoint_service.endpoints

    @property
    def schedules(self) -> dict[str, v1.Schedule]:
        return self.pipelines.schedules

    @property
    def pipeline_final_state(self) -> v1.PipelineState:
        return self.pipelines.final_state

    @pipeline_final_state.setter
    def pipeline_final_state(self, state: v1.PipelineState) -> None:
        self.pipelines.final_state = state

    def project_number(self, project: str) -> str:
        return self.context.names.parent(f"projects/{project}/locations/x").split("/")[1]

    # gRPC
    def _rpcs(self) -> list[Rpc]:
        registry, endpoints, pipelines = self.registry, self.endpoint_service, self.pipelines
        tuning = self.tuning
        operations, metadata = self.operations, self.metadata
        return [
            Rpc("ModelService", "UploadModel", v1.UploadModelRequest, registry.upload_model),
            Rpc("ModelService", "GetModel", v1.GetModelRequest, registry.get_model),
            Rpc("ModelService", "ListModels", v1.ListModelsRequest, registry.list_models),
            Rpc(
                "ModelService",
                "ListModelVersions",
                v1.ListModelVersionsRequest,
                registry.list_model_versions,
            ),
            Rpc(
                "ModelService",
                "MergeVersionAliases",
                v1.MergeVersionAliasesRequest,
                registry.merge_version_aliases,
            ),
            Rpc(
                "ModelService",
                "ImportModelEvaluation",
                v1.ImportModelEvaluationRequest,
                registry.import_model_evaluation,
            ),
            Rpc(
                "ModelService",
                "GetModelEvaluation",
                v1.GetModelEvaluationRequest,
                registry.get_model_evaluation,
            ),
            Rpc(
                "ModelService",
                "ListModelEvaluations",
                v1.ListModelEvaluationsRequest,
                registry.list_model_evaluations,
            ),
            Rpc(
                "ModelService",
                "BatchImportModelEvaluationSlices",
                v1.BatchImportModelEvaluationSlicesRequest,
                registry.batch_import_model_evaluation_slices,
            ),
            Rpc(
                "ModelService",
                "ListModelEvaluationSlices",
                v1.ListModelEvaluationSlicesRequest,
                registry.list_model_evaluation_slices,
            ),
            Rpc(
                "EndpointService",
                "CreateEndpoint",
                v1.CreateEndpointRequest,
                endpoints.create_endpoint,
            ),
            Rpc("EndpointService", "GetEndpoint", v1.GetEndpointRequest, endpoints.get_endpoint),
            Rpc(
                "EndpointService",
                "ListEndpoints",
                v1.ListEndpointsRequest,
                endpoints.list_endpoints,
            ),
            Rpc(
                "EndpointService",
                "UpdateEndpoint",
                v1.UpdateEndpointRequest,
                endpoints.update_endpoint,
            ),
            Rpc("EndpointService", "DeployModel", v1.DeployModelRequest, endpoints.deploy_model),
            Rpc(
                "EndpointService",
                "UndeployModel",
                v1.UndeployModelRequest,
                endpoints.undeploy_model,
            ),
            Rpc("PredictionService", "Predict", v1.PredictRequest, endpoints.predict),
            Rpc("PredictionService", "RawPredict", v1.RawPredictRequest, endpoints.raw_predict),
            Rpc(
                "JobService",
                "CreateBatchPredictionJob",
                v1.CreateBatchPredictionJobRequest,
                self.batch_jobs.create_batch_prediction_job,
            ),
            Rpc(
                "JobService",
                "GetBatchPredictionJob",
                v1.GetBatchPredictionJobRequest,
                self.batch_jobs.get_batch_prediction_job,
            ),
            Rpc(
                "PipelineService",
                "CreatePipelineJob",
                v1.CreatePipelineJobRequest,
                pipelines.create_pipeline_job,
            ),
            Rpc(
                "PipelineService",
                "GetPipelineJob",
                v1.GetPipelineJobRequest,
                pipelines.get_pipeline_job,
            ),
            Rpc(
                "PipelineService",
                "ListPipelineJobs",
                v1.ListPipelineJobsRequest,
                pipelines.list_pipeline_jobs,
            ),
            Rpc(
                "ScheduleService",
                "CreateSchedule",
                v1.CreateScheduleRequest,
                pipelines.create_schedule,
            ),
            Rpc("ScheduleService", "GetSchedule", v1.GetScheduleRequest, pipelines.get_schedule),
            Rpc(
                "ScheduleService",
                "ListSchedules",
                v1.ListSchedulesRequest,
                pipelines.list_schedules,
            ),
            Rpc(
                "ScheduleService",
                "UpdateSchedule",
                v1.UpdateScheduleRequest,
                pipelines.update_schedule,
            ),
            Rpc(
                "ScheduleService",
                "PauseSchedule",
                v1.PauseScheduleRequest,
                pipelines.pause_schedule,
            ),
            Rpc(
                "ScheduleService",
                "ResumeSchedule",
                v1.ResumeScheduleRequest,
                pipelines.resume_schedule,
            ),
            Rpc(
                "ScheduleService",
                "DeleteSchedule",
                v1.DeleteScheduleRequest,
                pipelines.delete_schedule,
            ),
            Rpc(
                "JobService",
                "CreateCustomJob",
                v1.CreateCustomJobRequest,
                self.custom_jobs.create_custom_job,
            ),
            Rpc(
                "JobService",
                "GetCustomJob",
                v1.GetCustomJobRequest,
                self.custom_jobs.get_custom_job,
            ),
            Rpc(
                "JobService",
                "CancelCustomJob",
                v1.CancelCustomJobRequest,
                self.custom_jobs.cancel_custom_job,
            ),
            Rpc(
                "JobService",
                "CreateHyperparameterTuningJob",
                v1.CreateHyperparameterTuningJobRequest,
                tuning.create_hyperparameter_tuning_job,
            ),
            Rpc(
                "JobService",
                "GetHyperparameterTuningJob",
                v1.GetHyperparameterTuningJobRequest,
                tuning.get_hyperparameter_tuning_job,
            ),
            Rpc(
                "JobService",
                "CancelHyperparameterTuningJob",
                v1.CancelHyperparameterTuningJobRequest,
                tuning.cancel_hyperparameter_tuning_job,
            ),
            *metadata.rpcs(Rpc),
            Rpc(
                "google.longrunning.Operations",
                "GetOperation",
                operations_pb2.GetOperationRequest,
                operations.get,
            ),
            Rpc(
                "google.longrunning.Operations",
                "WaitOperation",
                operations_pb2.WaitOperationRequest,
                operations.wait,
            ),
            Rpc(
                "google.longrunning.Operations",
                "ListOperations",
                operations_pb2.ListOperationsRequest,
                operations.list,
            ),
            Rpc(
                "google.longrunning.Operations",
                "CancelOperation",
                operations_pb2.CancelOperationRequest,
                operations.cancel,
            ),
            Rpc(
                "google.longrunning.Operations",
                "DeleteOperation",
                operations_pb2.DeleteOperationRequest,
                operations.delete,
            ),
        ]

    def _handler(self, rpc: Rpc) -> Callable[[Any, grpc.ServicerContext], Any]:
        method = rpc.method

        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            with self._log_lock:
                self.requests.append((method, request))
                refused = self._failures[method].pop(0) if self._failures[method] else None
                lost = self._failures_after[method].pop(0) if self._failures_after[method] else None
            if refused is not None:
                context.abort(refused, self._fault_message(method, refused, request))
            try:
                response = rpc.implementation(request)
            except ApiError as error:
                context.abort(error.code, error.message)
            if lost is not None:
                context.abort(lost, self._fault_message(method, lost, request))
            return response

        return handle

    @staticmethod
    def _fault_message(method: str, code: grpc.StatusCode, request: Any) -> str:
        if code == grpc.StatusCode.PERMISSION_DENIED:
            permission = _PERMISSIONS.get(method, f"aiplatform.{method}")
            resource = next(
                (
                    getattr(request, f, "")
                    for f in ("parent", "name", "endpoint")
                    if getattr(request, f, "")
                ),
                "",
            )
            return (
                f"Permission '{permission}' denied on resource "
                f"'//aiplatform.googleapis.com/{resource}' (or it may not exist)."
            )
        if code == grpc.StatusCode.UNAVAILABLE:
            return "The service is currently unavailable."
        return f"The Vertex AI emulator was told to answer {method} with {code.name}."

    def _generic_handlers(self) -> list[grpc.GenericRpcHandler]:
        services: dict[str, dict[str, grpc.RpcMethodHandler]] = defaultdict(dict)
        for rpc in self._rpcs():
            name = rpc.service if "." in rpc.service else _V1 + rpc.service
            deserialize = (
                getattr(rpc.request_type, "FromString", None) or rpc.request_type.deserialize
            )
            services[name][rpc.method] = grpc.unary_unary_rpc_method_handler(
                self._handler(rpc), request_deserializer=deserialize, response_serializer=_serialize
            )
        handlers = [grpc.method_handlers_generic_handler(n, m) for n, m in services.items()]
        return [*handlers, _Unimplemented(self.unimplemented)]

    def start(
        self,
        cert_path: Path,
        key_path: Path,
        port: int = 0,
        rest_port: int = 0,
        host: str = "localhost",
    ) -> VertexEmulator:
        """Serve gRPC with TLS on ``host:port`` and REST predictions on ``rest_port`` (0: free
        ports, then read ``self.port`` and ``self.rest_port``)."""
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        self._grpc.add_generic_rpc_handlers(tuple(self._generic_handlers()))
        credentials = grpc.ssl_server_credentials([(key_path.read_bytes(), cert_path.read_bytes())])
        self.port = self._grpc.add_secure_port(f"{host}:{port}", credentials)
        self._grpc.start()
        self._rest = ThreadingHTTPServer(("127.0.0.1", rest_port), _rest_handler(self))
        self.rest_port = self._rest.server_address[1]
        # Polled every 50 ms for shutdown (the default, 0.5 s, is what stop() would wait).
        threading.Thread(
            target=self._rest.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="vertex-rest",
            daemon=True,
        ).start()
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(None)
        if self._rest is not None:
            self._rest.shutdown()
            self._rest.server_close()
        self.endpoint_service.stop()
        self.tuning.stop()


class _Unimplemented(grpc.GenericRpcHandler):
    """Notes every method no service answers (gRPC then says UNIMPLEMENTED)."""

    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> None:
        self.seen.append(handler_call_details.method)
        return None


def _serialize(message: Any) -> bytes:
    if hasattr(message, "SerializeToString"):
        return message.SerializeToString()
    return type(message).serialize(message)


_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.FAILED_PRECONDITION: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED: HTTPStatus.FORBIDDEN,
    grpc.StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
}


def _rest_handler(emulator: VertexEmulator) -> type[BaseHTTPRequestHandler]:
    """``POST /v1/{endpoint}:predict`` and ``:rawPredict``, answered as Vertex AI's REST API."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: bytes, content_type: str, headers: dict | None = None):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def _error(self, code: grpc.StatusCode, message: str) -> None:
            status = _HTTP_STATUS.get(code, HTTPStatus.INTERNAL_SERVER_ERROR)
            payload = {"error": {"code": status.value, "message": message, "status": code.name}}
            self._reply(status.value, json.dumps(payload).encode(), "application/json")

        def do_GET(self) -> None:
            """Cloud Monitoring's ``projects.timeSeries.list`` (``monitoring.py``)."""
            path, _, query = self.path.partition("?")
            match = _REST_TIME_SERIES.match(path)
            if not match:
                self._error(grpc.StatusCode.NOT_FOUND, f"no route GET {path}")
                return
            try:
                parent = emulator.context.names.parent(f"projects/{match['project']}/locations/-")
                answer = emulator.endpoint_service.metrics.list_time_series(
                    parent.split("/")[1], urllib.parse.parse_qs(query)
                )
            except ApiError as error:
                self._error(error.code, error.message)
                return
            self._reply(200, json.dumps(answer).encode(), "application/json")

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if iam := _REST_TEST_IAM.match(self.path):
                asked = json.loads(body or b"{}").get("permissions", [])
                held = emulator.iam.test_permissions(iam["account"], asked)
                self._reply(
                    200,
                    json.dumps({"permissions": held} if held else {}).encode(),
                    "application/json",
                )
                return
            match = _REST_PREDICT.match(self.path)
            if not match:
                self._error(grpc.StatusCode.NOT_FOUND, f"no route POST {self.path}")
                return
            with emulator._log_lock:
                emulator.requests.append((f"REST {match['verb']}", body))
            try:
                if len(body) > PREDICT_LIMIT_BYTES:
                    raise request_too_large(len(body))
                if match["verb"] == "rawPredict":
                    data, content_type, deployed = emulator.endpoint_service.raw_predict_bytes(
                        match["endpoint"],
                        body,
                        self.headers.get("Content-Type", "application/json"),
                    )
                    headers = {
                        "X-Vertex-AI-Endpoint-Id": match["endpoint"].rsplit("/", 1)[-1],
                        "X-Vertex-AI-Deployed-Model-Id": deployed.id,
                    }
                    self._reply(200, data, content_type, headers)
                    return
                try:
                    request = json.loads(body)
                except (UnicodeDecodeError, json.JSONDecodeError) as error:
                    raise ApiError(
                        grpc.StatusCode.INVALID_ARGUMENT, f"Invalid JSON payload: {error}"
                    ) from None
                if not isinstance(request, dict):
                    raise ApiError(
                        grpc.StatusCode.INVALID_ARGUMENT, 'The body must be {"instances": [...]}.'
                    )
                answer = emulator.endpoint_service.predict_json(
                    match["endpoint"], request.get("instances"), request.get("parameters")
                )
                self._reply(200, json.dumps(answer).encode(), "application/json")
            except ApiError as error:
                self._error(error.code, error.message)

    return Handler
