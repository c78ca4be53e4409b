"""The Vertex AI target: Model Registry versions and endpoints, with the local registry's methods.

Imported only for the Vertex target (``components.lib.targets`` does so lazily): the SDK takes
seconds to import, which local steps should not pay.

``VertexModelRegistry`` and ``VertexEndpoints`` answer the same calls as the local
``ModelRegistry`` and ``EndpointRegistry``, so the upload and deploy steps do not branch on the
target. Every API call goes through ``call_vertex``: a transient UNAVAILABLE is retried a bounded
number of times, and a refused permission becomes one message that says which role is missing.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any, TypeVar

from google.api_core import exceptions
from google.cloud import aiplatform
from google.cloud.aiplatform.constants import prediction

from components import SERVING_IMAGE
from components.lib.serving.routing import (
    CONTAINER_HEALTH_ROUTE,
    CONTAINER_PORT,
    CONTAINER_PREDICT_ROUTE,
)
from components.lib.targets.base import DEFAULT_ALIAS, ModelVersion, Serving, most_traffic

logger = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_ATTEMPTS = 4
RETRY_FIRST_DELAY_S = 2.0
# Artifact Registry multi-regions that host Vertex AI's prebuilt prediction images.
_PREDICTION_REGISTRIES = {"us": "us", "europe": "europe", "asia": "asia", "australia": "asia"}
_LABEL_LIMIT = 63


class VertexError(RuntimeError):
    """A Vertex AI call failed for good; the message says what to do about it."""


def call_vertex(what: str, call: Callable[[], T]) -> T:
    """Run ``call``, retrying a transient UNAVAILABLE up to ``RETRY_ATTEMPTS`` times in all.

    Raises VertexError for a refused permission, for UNAVAILABLE that outlasts the attempts and
    for any other API error, naming ``what`` was being done.
    """
    attempt, delay = 1, RETRY_FIRST_DELAY_S
    while True:
        try:
            return call()
        except exceptions.ServiceUnavailable as error:
            if attempt >= RETRY_ATTEMPTS:
                raise VertexError(
                    f"{what}: Vertex AI stayed unavailable after {attempt} attempts "
                    f"({error.message}); try again later"
                ) from error
            logger.warning("%s: unavailable (%s), retry %d in %.0fs", what, error, attempt, delay)
            time.sleep(delay)
            attempt, delay = attempt + 1, delay * 2
        except exceptions.PermissionDenied as error:
            raise VertexError(
                f"{what}: permission denied ({error.message}). The caller (on Vertex AI "
                "Pipelines: the run's service account) needs roles/aiplatform.user on the "
                "project and read access to the model's bucket"
            ) from error
        except exceptions.GoogleAPICallError as error:
            status = error.grpc_status_code.name if error.grpc_status_code else error.code
            raise VertexError(f"{what}: {status}: {error.message}") from error


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


# The model's serving container: the project's serving image by default.
PREBUILT = "prebuilt"
"""``serving_image`` keyword: Vertex AI's prebuilt TensorFlow Serving image (prediction_image)."""


def serving_container(serving_image: str, location: str, gpu: bool) -> dict[str, Any]:
    """``Model.upload``'s container arguments for the pipeline parameter ``serving_image``.

    Empty: the project's serving image (docker/Dockerfile.serving), with the routes and port of
    its contract. ``prebuilt``: Vertex AI's prebuilt TensorFlow image (``prediction_image``),
    which brings its own. Any other URI is taken to follow the serving image's contract.
    """
    if serving_image == PREBUILT:
        return {
            "serving_container_image_uri": prediction_image(
                location, installed_tensorflow_version(), gpu
            )
        }
    if gpu and not serving_image:
        logger.warning(
            "the serving image runs TensorFlow on CPU; set serving_image=%s for Vertex AI's "
            "GPU TensorFlow image",
            PREBUILT,
        )
    return {
        "serving_container_image_uri": serving_image or SERVING_IMAGE,
        "serving_container_predict_route": CONTAINER_PREDICT_ROUTE,
        "serving_container_health_route": CONTAINER_HEALTH_ROUTE,
        "serving_container_ports": [CONTAINER_PORT],
    }


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def installed_tensorflow_version() -> str:
    """TensorFlow's version without importing it (the import takes seconds)."""
    return metadata.version("tensorflow")


def _by_display_name(resource: type, display_name: str, project: str, location: str) -> list:
    return call_vertex(
        f"list {resource.__name__.lower()}s named {display_name!r}",
        lambda: resource.list(
            filter=f'display_name="{display_name}"', project=project, location=location
        ),
    )


class VertexModelRegistry:
    """Vertex AI Model Registry: each upload is a new version of the model with that name."""

    def __init__(self, project: str, location: str, serving_image: str = "", gpu: bool = False):
        self.project = project
        self.location = location
        self.serving_image = serving_image
        self.gpu = gpu

    def upload_version(
        self,
        display_name: str,
        artifact_dir: str,
        metrics: dict[str, float],
        labels: dict[str, str],
        aliases: Sequence[str] = (),
        description: str = "",
    ) -> ModelVersion:
        """Upload the SavedModel at ``artifact_dir`` (``gs://``) as the model's default version,
        served by the container that ``serving_container`` picks for ``serving_image``."""
        if not artifact_dir.startswith("gs://"):
            raise VertexError(
                f"the model artifact {artifact_dir!r} is not in Cloud Storage; on Vertex AI the "
                "pipeline root must be a gs:// folder"
            )
        container = serving_container(self.serving_image, self.location, self.gpu)
        existing = _by_display_name(aiplatform.Model, display_name, self.project, self.location)
        parent = existing[0].resource_name if existing else None
        model = call_vertex(
            f"upload model {display_name!r}",
            lambda: aiplatform.Model.upload(
                display_name=display_name,
                artifact_uri=artifact_dir,
                **container,
                parent_model=parent,
                is_default_version=True,
                version_aliases=[alias for alias in aliases if alias != DEFAULT_ALIAS],
                version_description=description
                or ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())),
                labels={label_value(k): label_value(v) for k, v in labels.items()},
                project=self.project,
                location=self.location,
            ),
        )
        return ModelVersion(model.resource_name, model.version_id, display_name, artifact_dir)

    def get_version(self, model: str, version_id: str) -> ModelVersion:
        found = call_vertex(
            f"get model {model}@{version_id}",
            lambda: aiplatform.Model(model, version=version_id),
        )
        return ModelVersion(
            found.resource_name, found.version_id, found.display_name, found.uri or ""
        )


class VertexEndpoints:
    """Vertex AI endpoints, found by display name and created on first use."""

    def __init__(self, project: str, location: str, serving: Serving) -> None:
        self.project = project
        self.location = location
        self.serving = serving

    def served_version(self, display_name: str) -> tuple[str, str] | None:
        """(model, version id) taking most of the endpoint's traffic; None if it serves nothing."""
        existing = _by_display_name(aiplatform.Endpoint, display_name, self.project, self.location)
        if not existing:
            return None
        deployed = [
            {"id": d.id, "model": d.model, "modelVersionId": d.model_version_id}
            for d in existing[0].gca_resource.deployed_models
        ]
        return most_traffic(deployed, dict(existing[0].traffic_split)) if deployed else None

    def _endpoint(self, display_name: str) -> aiplatform.Endpoint:
        existing = _by_display_name(aiplatform.Endpoint, display_name, self.project, self.location)
        if existing:
            return existing[0]
        return call_vertex(
            f"create endpoint {display_name!r}",
            lambda: aiplatform.Endpoint.create(
                display_name=display_name, project=self.project, location=self.location
            ),
        )

    def deploy(self, display_name: str, version: ModelVersion) -> dict[str, Any]:
        """Deploy ``version`` with its traffic share, then undeploy versions left with none.

        Retiring happens only after the deploy succeeded: if it fails, the versions that served
        before keep their traffic.
        """
        endpoint = self._endpoint(display_name)
        model = call_vertex(
            f"get model {version.resource_name}",
            lambda: aiplatform.Model(version.model, version=version.version_id),
        )
        serving = self.serving
        if not serving.service_account:
            logger.warning(
                "serving_service_account is not set: %s runs as Vertex AI's default service "
                "account; set it to run the model with its own, least-privileged identity",
                version.resource_name,
            )
        call_vertex(
            f"deploy {version.resource_name} to {endpoint.resource_name}",
            lambda: endpoint.deploy(
                model,
                deployed_model_display_name=f"{version.display_name}-v{version.version_id}",
                traffic_percentage=serving.traffic_percentage,
                machine_type=serving.machine_type,
                min_replica_count=serving.min_replicas,
                max_replica_count=serving.max_replicas,
                accelerator_type=serving.accelerator_type or None,
                accelerator_count=serving.accelerator_count or None,
                service_account=serving.service_account or None,
            ),
        )
        for deployed in list(endpoint.gca_resource.deployed_models):
            if not endpoint.traffic_split.get(deployed.id):
                call_vertex(
                    f"undeploy {deployed.id} ({deployed.model}@{deployed.model_version_id})",
                    lambda deployed_id=deployed.id: endpoint.undeploy(deployed_id),
                )
        return {
            "name": endpoint.resource_name,
            "displayName": display_name,
            "trafficSplit": dict(endpoint.traffic_split),
            "deployedModels": [
                {"id": d.id, "model": d.model, "modelVersionId": d.model_version_id}
                for d in endpoint.gca_resource.deployed_models
            ],
        }
