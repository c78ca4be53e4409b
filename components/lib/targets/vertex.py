"""The Vertex AI target: Model Registry versions and endpoints, with the local registry's methods.

Imported only for the Vertex target (``components.lib.targets`` does so lazily): the SDK takes
seconds to import, which local steps should not pay.

``VertexModelRegistry`` and ``VertexEndpoints`` implement the protocols of ``base``, as the
local ``ModelRegistry`` and ``EndpointRegistry`` do, so the upload and deploy steps do not branch
on the target. Every API call goes through ``call_vertex``: a transient UNAVAILABLE is retried a
bounded number of times, a service that cannot be reached or a refused permission becomes one
message that says what to do. Long operations (deploy, undeploy) wait at most
``DEPLOY_TIMEOUT_S``. With ``IMAGE_CLASSIFIER_VERTEX_EMULATOR_HOST`` set, the calls go to a
Vertex AI emulator instead.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any, TypeVar

from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform, aiplatform_v1
from google.cloud.aiplatform import initializer, utils
from google.cloud.aiplatform.constants import prediction
from google.protobuf import field_mask_pb2, json_format, struct_pb2

from components.lib.monitoring.sampler import MONITORING_URI_ENV, requests_root
from components.lib.serving.routing import (
    CONTAINER_HEALTH_ROUTE,
    CONTAINER_PORT,
    CONTAINER_PREDICT_ROUTE,
    MODEL_DISPLAY_NAME_ENV,
)
from components.lib.storage import gcs_uri, normalized_uri
from components.lib.targets.base import (
    DEFAULT_ALIAS,
    Deployment,
    ModelEvaluationRecord,
    ModelVersion,
    RunValue,
    Serving,
    most_traffic,
    plan_traffic,
    resource_id,
    split_reference,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_ATTEMPTS = 4
RETRY_FIRST_DELAY_S = 2.0
DEPLOY_TIMEOUT_S = 60 * 60
"""How long a deploy or undeploy is waited for: a GPU replica can take half an hour to start."""
UPLOAD_SETTLE_S = 10 * 60
"""How long a retried upload or deploy waits for a lost one still running to finish."""
# Artifact Registry multi-regions that host Vertex AI's prebuilt prediction images.
_PREDICTION_REGISTRIES = {"us": "us", "europe": "europe", "asia": "asia", "australia": "asia"}
_LABEL_LIMIT = 63
EMULATOR_HOST_ENV = "IMAGE_CLASSIFIER_VERTEX_EMULATOR_HOST"
DESCRIPTION_LIMIT = 2048  # characters of an endpoint's description kept for a canary review
# How gRPC says that the service's address could not be resolved or connected to.
_DNS_FAILURE = re.compile(
    r"DNS resolution failed|errors resolving|lookup failed|Name or service not known", re.I
)
_CONNECT_FAILURE = re.compile(r"failed to connect to all addresses|Connection refused", re.I)


class VertexError(RuntimeError):
    """A Vertex AI call failed for good; the message says what to do about it."""


def use_emulator_if_set() -> bool:
    """Send the SDK's calls to the emulator at ``IMAGE_CLASSIFIER_VERTEX_EMULATOR_HOST``
    (``host:port``), without credentials, as ``STORAGE_EMULATOR_HOST`` does for Cloud Storage;
    False if unset."""
    host = os.environ.get(EMULATOR_HOST_ENV)
    if host:
        # gRPC named: without a project, init would switch the SDK to REST.
        aiplatform.init(api_endpoint=host, credentials=AnonymousCredentials(), api_transport="grpc")
    return bool(host)


def call_vertex(
    what: str, call: Callable[[], T], recover: Callable[[], T | None] | None = None
) -> T:
    """Run ``call``, retrying a transient UNAVAILABLE up to ``RETRY_ATTEMPTS`` times in all.

    ``recover``, when given, is asked before each retry whether the failed call took effect
    anyway (an answer lost on the way back); what it finds is returned instead of calling again,
    so a retried create never makes a duplicate. Raises VertexError for an address that does not
    resolve (at once: waiting does not fix a wrong name), for UNAVAILABLE that outlasts the
    attempts, for a refused permission and for any other API error, naming ``what`` was being
    done.
    """
    use_emulator_if_set()
    attempt, delay = 1, RETRY_FIRST_DELAY_S
    while True:
        try:
            return call()
        except exceptions.ServiceUnavailable as error:
            if _DNS_FAILURE.search(error.message or ""):
                raise VertexError(
                    f"{what}: cannot reach Vertex AI: its address does not resolve (DNS: "
                    f"{_first_line(error.message)}); check the network connection and the region"
                ) from error
            if attempt >= RETRY_ATTEMPTS:
                if _CONNECT_FAILURE.search(error.message or ""):
                    raise VertexError(
                        f"{what}: cannot connect to Vertex AI ({_first_line(error.message)}, "
                        f"{attempt} attempts); check the network connection, proxy and firewall"
                    ) from error
                raise VertexError(
                    f"{what}: Vertex AI stayed unavailable after {attempt} attempts "
                    f"({_first_line(error.message)}); try again later"
                ) from error
            logger.warning("%s: unavailable (%s), retry %d in %.0fs", what, error, attempt, delay)
            time.sleep(delay)
            attempt, delay = attempt + 1, delay * 2
            if recover is not None:
                recovered = recover()
                if recovered is not None:
                    logger.info("%s: the call had taken effect before it failed", what)
                    return recovered
        except exceptions.PermissionDenied as error:
            raise VertexError(
                f"{what}: permission denied ({error.message}). The caller (on Vertex AI "
                "Pipelines: the run's service account) needs roles/aiplatform.user on the "
                "project and read access to the model's bucket"
            ) from error
        except exceptions.GoogleAPICallError as error:
            status = error.grpc_status_code.name if error.grpc_status_code else error.code
            raise VertexError(f"{what}: {status}: {_first_line(error.message)}") from error


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


def wait_for_operation(what: str, operation: Any) -> Any:
    """The result of a long-running ``operation``, waiting at most ``DEPLOY_TIMEOUT_S``;
    VertexError when it fails or is still running by then."""
    try:
        return operation.result(timeout=DEPLOY_TIMEOUT_S)
    except concurrent.futures.TimeoutError:
        raise VertexError(
            f"{what}: not finished after {DEPLOY_TIMEOUT_S:.0f} s; it goes on in Vertex AI "
            f"(operation {operation.operation.name}): check the endpoint in the console before "
            "re-running"
        ) from None
    except exceptions.GoogleAPICallError as error:
        raise VertexError(f"{what}: {_first_line(error.message)}") from error


def label_value(text: str) -> str:
    """A Vertex label value: lowercase letters, digits, ``_`` and ``-``, at most 63 characters."""
    return re.sub(r"[^a-z0-9_-]+", "-", text.lower())[:_LABEL_LIMIT]


def prediction_image(location: str, tensorflow_version: str, gpu: bool = False) -> str:
    """Vertex AI's prebuilt TensorFlow prediction image for the version that exported the model.

    Uses the registry of the region's continent, and the newest prebuilt version not newer than
    ``tensorflow_version`` that the SDK knows (an exact match when there is one).
    """
    region = _PREDICTION_REGISTRIES.get(location.split("-", 1)[0], "us")
    images = prediction._SERVING_CONTAINER_URI_MAP[region]["tensorflow"]["gpu" if gpu else "cpu"]
    wanted = _version_key(tensorflow_version)
    candidates = sorted(
        (key, version) for version in images if (key := _version_key(version)) <= wanted
    )
    if not candidates:
        raise VertexError(
            f"no prebuilt Vertex AI prediction image for TensorFlow {tensorflow_version}; "
            "set the pipeline parameter serving_image to a serving image"
        )
    version = candidates[-1][1]
    if _version_key(version) != wanted:
        logger.warning(
            "no prebuilt prediction image for TensorFlow %s; using %s (set serving_image to "
            "override)",
            tensorflow_version,
            version,
        )
    return images[version]


PREBUILT = "prebuilt"
"""``serving_image`` keyword: Vertex AI's prebuilt TensorFlow Serving image (prediction_image)."""


def serving_container(serving_image: str, location: str, gpu: bool) -> dict[str, Any]:
    """``Model.upload``'s container arguments for the pipeline parameter ``serving_image``.

    A URI: the project's serving image (docker/Dockerfile.serving; the compiled default is the
    one pushed beside the steps' images) or another that follows its contract, with the routes
    and port of that contract. ``prebuilt``: Vertex AI's prebuilt TensorFlow image
    (``prediction_image``), which brings its own.
    """
    if not serving_image:
        raise ValueError(
            "serving_image is empty: set it to the serving image's URI (docker/build.sh pushes "
            f"it beside the pipeline's images) or to {PREBUILT!r}"
        )
    if serving_image == PREBUILT:
        return {
            "serving_container_image_uri": prediction_image(
                location, installed_tensorflow_version(), gpu
            )
        }
    if gpu:
        logger.warning(
            "the serving image runs TensorFlow on CPU; set serving_image=%s for Vertex AI's "
            "GPU TensorFlow image",
            PREBUILT,
        )
    return {
        "serving_container_image_uri": serving_image,
        "serving_container_predict_route": CONTAINER_PREDICT_ROUTE,
        "serving_container_health_route": CONTAINER_HEALTH_ROUTE,
        "serving_container_ports": [CONTAINER_PORT],
    }


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def installed_tensorflow_version() -> str:
    """TensorFlow's version without importing it (the import takes seconds)."""
    return metadata.version("tensorflow")


def _single_by_display_name(
    resource: type[T], display_name: str, project: str, location: str
) -> T | None:
    """The one ``resource`` (Model, Endpoint) named ``display_name``, or None.

    Several with one name would make the choice arbitrary (the API lists in no promised order),
    and deploying to the wrong endpoint costs money: that is an error naming all of them.
    """
    kind = resource.__name__.lower()
    found = call_vertex(
        f"list {kind}s named {display_name!r}",
        lambda: resource.list(
            filter=f'display_name="{display_name}"', project=project, location=location
        ),
    )
    if len(found) > 1:
        named = ", ".join(
            f"{item.resource_name} (created {item.create_time:%Y-%m-%d %H:%M})"
            for item in sorted(found, key=lambda item: item.create_time)
        )
        raise VertexError(
            f"{len(found)} {kind}s in {project}/{location} are named {display_name!r}: {named}; "
            f"delete or rename all but one, or give the pipeline another {kind} display name"
        )
    return found[0] if found else None


def settle(client: Any, resource: str, metadata_type: type) -> None:
    """Wait, at most ``UPLOAD_SETTLE_S``, until no operation of ``metadata_type`` (an upload,
    a deploy) runs on ``resource``: one whose answer was lost may still be running when it is
    retried, and its result exists only once it has finished; looking earlier would make a
    second. The operations are listed where the service keeps them, under the resource
    (``.../models/M/operations``, ``.../endpoints/E/operations``)."""
    wanted = metadata_type.pb().DESCRIPTOR
    deadline = time.monotonic() + UPLOAD_SETTLE_S
    while time.monotonic() < deadline:
        running, token = False, ""
        while True:
            try:
                page = client.list_operations(request={"name": resource, "page_token": token})
            except exceptions.GoogleAPICallError as error:
                logger.warning("cannot list the operations of %s (%s)", resource, error)
                return
            running = running or any(
                not op.done and op.metadata.Is(wanted) for op in page.operations
            )
            token = page.next_page_token
            if running or not token:
                break
        if not running:
            return
        time.sleep(1.0)


def _client(client_class: type, location: str) -> Any:
    use_emulator_if_set()
    return initializer.global_config.create_client(
        client_class=client_class, location_override=location
    )


def find_model(project: str, location: str, reference: str) -> aiplatform.Model:
    """The Model Registry version named by ``reference`` (display name, id or resource name)."""
    name, version = split_reference(reference)
    if not name.startswith("projects/"):
        found = call_vertex(
            f"list models named {name!r}",
            lambda: aiplatform.Model.list(
                filter=f'display_name="{name}"', project=project, location=location
            ),
        )
        if found:
            name = found[0].resource_name
    return call_vertex(
        f"get model {name}@{version}",
        lambda: aiplatform.Model(name, version=version, project=project, location=location),
    )


class VertexModelRegistry:
    """Vertex AI Model Registry: each upload is a new version of the model with that name."""

    def __init__(self, project: str, location: str, serving_image: str = "", gpu: bool = False):
        self.project = project
        self.location = location
        self.serving_image = serving_image
        self.gpu = gpu

    def _model(self, display_name: str) -> aiplatform.Model | None:
        return _single_by_display_name(aiplatform.Model, display_name, self.project, self.location)

    def upload_version(
        self,
        display_name: str,
        artifact_dir: str,
        metrics: dict[str, float],
        labels: dict[str, str],
        aliases: Sequence[str] = (),
        description: str = "",
    ) -> ModelVersion:
        """Upload the SavedModel at ``artifact_dir`` (``gs://``, or a path under the bucket
        mount) as the model's default version.

        An artifact that is already a version of the model returns that version: a re-run whose
        training was cached registers nothing, and neither does a retry after an upload whose
        answer was lost. It is served by the container that ``serving_container`` picks
        for ``serving_image``; the project's server is told where to write its request samples
        (``monitoring.sampler.requests_root``).
        """
        artifact_dir = gcs_uri(artifact_dir)
        if not artifact_dir.startswith("gs://"):
            raise VertexError(
                f"the model artifact {artifact_dir!r} is not in Cloud Storage; on Vertex AI the "
                "pipeline root must be a gs:// folder"
            )
        container = serving_container(self.serving_image, self.location, self.gpu)
        if self.serving_image != PREBUILT:  # the project's server samples requests for drift
            container["serving_container_environment_variables"] = {
                MONITORING_URI_ENV: requests_root(artifact_dir),
                MODEL_DISPLAY_NAME_ENV: display_name,
            }
        parent = self._model(display_name)
        if parent is not None:
            existing = self._find_in(parent.resource_name, artifact_dir)
            if existing:
                return existing
        # A first upload names its model (the display name's id), so that a retry after a lost
        # answer knows where the upload's operation lives (``models/M/operations``) and is
        # refused ALREADY_EXISTS rather than registering a second model of the same name.
        model_id = None if parent else resource_id(display_name)
        model_name = (
            parent.resource_name
            if parent
            else f"projects/{self.project}/locations/{self.location}/models/{model_id}"
        )

        def upload() -> ModelVersion:
            model = aiplatform.Model.upload(
                display_name=display_name,
                artifact_uri=artifact_dir,
                **container,
                parent_model=parent.resource_name if parent else None,
                model_id=model_id,
                is_default_version=True,
                version_aliases=[alias for alias in aliases if alias != DEFAULT_ALIAS],
                version_description=description
                or ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())),
                labels={label_value(k): label_value(v) for k, v in labels.items()},
                project=self.project,
                location=self.location,
            )
            return ModelVersion(
                model.resource_name, model.version_id, display_name, artifact_dir, artifact_dir
            )

        def recover() -> ModelVersion | None:
            client = _client(utils.ModelClientWithOverride, self.location)
            settle(client, model_name, aiplatform_v1.UploadModelOperationMetadata)
            return self.find_version(display_name, artifact_dir)

        return call_vertex(f"upload model {display_name!r}", upload, recover=recover)

    def find_version(self, display_name: str, source_uri: str) -> ModelVersion | None:
        """The version of ``display_name`` whose artifact is ``source_uri``, if any."""
        parent = self._model(display_name)
        return self._find_in(parent.resource_name, source_uri) if parent else None

    def _find_in(self, model: str, source_uri: str) -> ModelVersion | None:
        wanted = normalized_uri(source_uri)
        client = _client(utils.ModelClientWithOverride, self.location)
        versions = call_vertex(
            f"list the versions of {model}", lambda: list(client.list_model_versions(name=model))
        )
        for version in versions:
            if version.artifact_uri and normalized_uri(version.artifact_uri) == wanted:
                return _model_version(version)
        return None

    def resolve(self, reference: str) -> ModelVersion:
        """The version named by ``reference`` (display name, id or resource name)."""
        return _model_version(find_model(self.project, self.location, reference).gca_resource)

    def get_version(self, model: str, version_id: str) -> ModelVersion:
        client = _client(utils.ModelClientWithOverride, self.location)
        found = call_vertex(
            f"get model {model}@{version_id}",
            lambda: client.get_model(name=f"{model}@{version_id}"),
        )
        return _model_version(found)

    def import_evaluation(
        self, version: ModelVersion, evaluation: ModelEvaluationRecord
    ) -> ModelEvaluationRecord:
        """ImportModelEvaluation on the version, then its slices (BatchImportModelEvaluationSlices,
        ``SLICE_BATCH`` at a time), as Google's own evaluation importer does. A version that has
        an evaluation of the same fingerprint keeps it (its slices completed if an earlier
        import stopped between the two calls); a retried import finds the one that got through.
        """
        client = _client(utils.ModelClientWithOverride, self.location)
        parent = version.resource_name
        existing = self._find_evaluation(version, evaluation.fingerprint)
        if existing is None:
            message = aiplatform_v1.ModelEvaluation(
                display_name=evaluation.display_name,
                metrics_schema_uri=evaluation.metrics_schema_uri,
                metrics=_value(evaluation.metrics),
                metadata=_value(evaluation.registry_metadata()),
                slice_dimensions=sorted({s["dimension"] for s in evaluation.slices}),
            )
            imported = call_vertex(
                f"import the evaluation of {parent}",
                lambda: client.import_model_evaluation(parent=parent, model_evaluation=message),
                recover=lambda: self._find_evaluation(version, evaluation.fingerprint),
            )
            name = imported.name
        elif existing.slices or not evaluation.slices:
            return existing
        else:
            name = existing.name
        for start in range(0, len(evaluation.slices), SLICE_BATCH):
            batch = [
                aiplatform_v1.ModelEvaluationSlice(
                    slice_=aiplatform_v1.ModelEvaluationSlice.Slice(
                        dimension=s["dimension"], value=s["value"]
                    ),
                    metrics_schema_uri=evaluation.metrics_schema_uri,
                    metrics=_value(s["metrics"]),
                )
                for s in evaluation.slices[start : start + SLICE_BATCH]
            ]
            call_vertex(
                f"import the slices of {name}",
                lambda batch=batch: client.batch_import_model_evaluation_slices(
                    parent=name, model_evaluation_slices=batch
                ),
            )
        return self._find_evaluation(version, evaluation.fingerprint)

    def _find_evaluation(
        self, version: ModelVersion, fingerprint: str
    ) -> ModelEvaluationRecord | None:
        found = [e for e in self.list_evaluations(version) if e.fingerprint == fingerprint]
        return found[0] if found else None

    def list_evaluations(self, version: ModelVersion) -> list[ModelEvaluationRecord]:
        """ListModelEvaluations of the version (every page), each with its slices, oldest
        first."""
        client = _client(utils.ModelClientWithOverride, self.location)
        parent = version.resource_name

        def read() -> list[ModelEvaluationRecord]:
            records = []
            for found in client.list_model_evaluations(parent=parent):
                slices = [
                    {
                        "dimension": s.slice_.dimension,
                        "value": s.slice_.value,
                        "metrics": _native(aiplatform_v1.ModelEvaluationSlice.pb(s).metrics),
                    }
                    for s in client.list_model_evaluation_slices(parent=found.name)
                ]
                pb = aiplatform_v1.ModelEvaluation.pb(found)
                records.append(
                    (
                        found.create_time,
                        ModelEvaluationRecord.from_registry(
                            name=found.name,
                            display_name=found.display_name,
                            metrics_schema_uri=found.metrics_schema_uri,
                            metrics=_native(pb.metrics),
                            metadata=_native(pb.metadata) or {},
                            slices=slices,
                        ),
                    )
                )
            return [record for _, record in sorted(records, key=lambda pair: pair[0])]

        return call_vertex(f"list the evaluations of {parent}", read)


SLICE_BATCH = 50
"""Slices per BatchImportModelEvaluationSlices call (what Google's evaluation importer sends)."""


def _value(data: Any) -> struct_pb2.Value:
    """A JSON-like value as the API's ``google.protobuf.Value``."""
    return json_format.ParseDict(data, struct_pb2.Value())


def _native(value: struct_pb2.Value) -> Any:
    """A ``google.protobuf.Value`` as plain Python (numbers come back as floats)."""
    return json_format.MessageToDict(value) if value.WhichOneof("kind") else None


def _model_version(model: aiplatform_v1.Model) -> ModelVersion:
    name = model.name.split("@", 1)[0]
    return ModelVersion(
        name, model.version_id, model.display_name, model.artifact_uri, model.artifact_uri
    )


class VertexEndpoints:
    """Vertex AI endpoints, found by display name and created on first use."""

    def __init__(self, project: str, location: str, serving: Serving) -> None:
        self.project = project
        self.location = location
        self.serving = serving

    @functools.cached_property
    def _client(self) -> Any:
        return _client(utils.EndpointClientWithOverride, self.location)

    def _find(self, display_name: str) -> aiplatform_v1.Endpoint | None:
        found = _single_by_display_name(
            aiplatform.Endpoint, display_name, self.project, self.location
        )
        return self._get(found.resource_name) if found else None

    def _get(self, name: str) -> aiplatform_v1.Endpoint:
        return call_vertex(f"get endpoint {name}", lambda: self._client.get_endpoint(name=name))

    def served_version(self, display_name: str) -> tuple[str, str] | None:
        """(model, version id) taking most of the endpoint's traffic; None if it serves nothing."""
        endpoint = self._find(display_name)
        if endpoint is None:
            return None
        served = most_traffic(_deployments(endpoint), dict(endpoint.traffic_split))
        return (served.model, served.version_id) if served else None

    def _create(self, display_name: str) -> aiplatform_v1.Endpoint:
        created = call_vertex(
            f"create endpoint {display_name!r}",
            lambda: aiplatform.Endpoint.create(
                display_name=display_name, project=self.project, location=self.location
            ),
        )
        return self._get(created.resource_name)

    def deploy(self, display_name: str, version: ModelVersion) -> dict[str, Any]:
        """Serve ``version`` by ``plan_traffic``'s rule, with an explicit traffic split.

        The new split is in place before anything is retired: if the deploy fails, the versions
        that served before keep their traffic. A version already served with the requested
        share is left alone (``changed`` False); one already deployed only gets its new share.
        """
        endpoint = self._find(display_name) or self._create(display_name)
        plan = plan_traffic(
            _deployments(endpoint),
            dict(endpoint.traffic_split),
            version.model,
            version.version_id,
            self.serving.traffic_percentage,
        )
        if plan.unchanged:
            return _describe(endpoint, changed=False)
        if plan.existing is None:
            self._deploy_new(endpoint.name, version, plan.split)
        else:
            call_vertex(
                f"set the traffic split of {endpoint.name} to {plan.split}",
                lambda: self._client.update_endpoint(
                    endpoint=aiplatform_v1.Endpoint(name=endpoint.name, traffic_split=plan.split),
                    update_mask=field_mask_pb2.FieldMask(paths=["traffic_split"]),
                ),
            )
        for retired in plan.retire:
            what = f"undeploy {retired.id} ({retired.model}@{retired.version_id})"
            operation = call_vertex(
                what,
                lambda retired=retired: self._client.undeploy_model(
                    endpoint=endpoint.name, deployed_model_id=retired.id
                ),
            )
            wait_for_operation(what, operation)
        return _describe(self._get(endpoint.name), changed=True)

    def deployments(self, display_name: str) -> tuple[list[Deployment], dict[str, int], str]:
        """The endpoint's deployments, traffic split and resource name (KeyError: no endpoint)."""
        endpoint = self._find(display_name)
        if endpoint is None:
            raise KeyError(f"no endpoint {display_name!r} in {self.project}/{self.location}")
        return _deployments(endpoint), dict(endpoint.traffic_split), endpoint.name

    def set_traffic(
        self, display_name: str, split: dict[str, int], retire: Sequence[str], review: dict
    ) -> dict[str, Any]:
        """Give the endpoint ``split`` and record ``review`` with it (its labels
        ``canary-review`` and ``canary-deployed-model``, its description the reasons), then
        undeploy ``retire``: the split is in place before anything is taken away."""
        endpoint = self._find(display_name)
        if endpoint is None:
            raise KeyError(f"no endpoint {display_name!r} in {self.project}/{self.location}")
        labels = {
            **dict(endpoint.labels),
            "canary-review": label_value(review["action"]),
            "canary-deployed-model": label_value(review["canary"]),
        }
        call_vertex(
            f"set the traffic split of {endpoint.name} to {split}",
            lambda: self._client.update_endpoint(
                endpoint=aiplatform_v1.Endpoint(
                    name=endpoint.name,
                    traffic_split=split,
                    labels=labels,
                    description=review["summary"][:DESCRIPTION_LIMIT],
                ),
                update_mask=field_mask_pb2.FieldMask(
                    paths=["traffic_split", "labels", "description"]
                ),
            ),
        )
        for deployed_id in retire:
            what = f"undeploy {deployed_id} from {endpoint.name}"
            operation = call_vertex(
                what,
                lambda deployed_id=deployed_id: self._client.undeploy_model(
                    endpoint=endpoint.name, deployed_model_id=deployed_id
                ),
            )
            wait_for_operation(what, operation)
        return _describe(self._get(endpoint.name), changed=True)

    def _deploy_new(self, endpoint: str, version: ModelVersion, split: dict[str, int]) -> None:
        serving = self.serving
        if not serving.service_account:
            logger.warning(
                "serving_service_account is not set: %s runs as Vertex AI's default service "
                "account; set it to run the model with its own, least-privileged identity",
                version.resource_name,
            )
        machine = aiplatform_v1.MachineSpec(machine_type=serving.machine_type)
        if serving.accelerator_type:
            try:
                machine.accelerator_type = aiplatform_v1.AcceleratorType[serving.accelerator_type]
            except KeyError:
                raise VertexError(
                    f"unknown serving accelerator type {serving.accelerator_type!r}; e.g. "
                    "NVIDIA_TESLA_T4, NVIDIA_L4"
                ) from None
            machine.accelerator_count = serving.accelerator_count
        deployed = aiplatform_v1.DeployedModel(
            model=version.resource_name,
            display_name=f"{version.display_name}-v{version.version_id}",
            dedicated_resources=aiplatform_v1.DedicatedResources(
                machine_spec=machine,
                min_replica_count=serving.min_replicas,
                max_replica_count=serving.max_replicas,
            ),
            service_account=serving.service_account,
        )
        what = f"deploy {version.resource_name} to {endpoint}"
        logger.info(
            "%s with traffic split %s (waiting at most %d s)", what, split, DEPLOY_TIMEOUT_S
        )

        def deploy() -> Any:
            operation = self._client.deploy_model(
                endpoint=endpoint, deployed_model=deployed, traffic_split=split
            )
            return wait_for_operation(what, operation)

        def recover() -> Any:
            """The deploy whose answer was lost, once it has finished, if it took effect."""
            settle(self._client, endpoint, aiplatform_v1.DeployModelOperationMetadata)
            served = self._get(endpoint).deployed_models
            return next(
                (
                    d
                    for d in served
                    if (d.model, d.model_version_id) == (version.model, version.version_id)
                ),
                None,
            )

        call_vertex(what, deploy, recover=recover)


def _deployments(endpoint: aiplatform_v1.Endpoint) -> list[Deployment]:
    return [Deployment(d.id, d.model, d.model_version_id) for d in endpoint.deployed_models]


def _describe(endpoint: aiplatform_v1.Endpoint, changed: bool) -> dict[str, Any]:
    return {
        "name": endpoint.name,
        "displayName": endpoint.display_name,
        "trafficSplit": dict(endpoint.traffic_split),
        "deployedModels": [
            {"id": d.id, "model": d.model, "modelVersionId": d.model_version_id}
            for d in endpoint.deployed_models
        ],
        "changed": changed,
    }


class VertexExperiments:
    """Vertex AI Experiments: each run an ``ExperimentRun`` with its parameters and metrics."""

    def __init__(self, project: str, location: str) -> None:
        self.project = project
        self.location = location

    def record_run(
        self, experiment: str, run: str, params: dict[str, RunValue], metrics: dict[str, float]
    ) -> str:
        """Get or create ``experiment`` (without a backing TensorBoard: the training's
        TensorBoard logs go to the job's own), then create the run, log its parameters and
        metrics, and mark it complete; returns the run's resource name."""
        where = {"project": self.project, "location": self.location}

        def record() -> str:
            found = aiplatform.Experiment.get_or_create(experiment, **where)
            created = aiplatform.ExperimentRun.create(run, experiment=found, **where)
            created.log_params(params)
            created.log_metrics(metrics)
            created.end_run()
            return created.resource_name

        use_emulator_if_set()
        return call_vertex(f"record run {run!r} in experiment {experiment!r}", record)
