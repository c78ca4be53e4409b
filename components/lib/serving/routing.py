"""Which exported model answers a prediction request: the one model of a serving container, or
the version that a local endpoint's traffic split picks. No web framework, no TensorFlow: the
local registry (``components.lib.targets.local``) implements ``EndpointRouter`` from here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Deployment:
    """The exported model that answers a request, and, where known, its place in a registry."""

    artifact_uri: str
    deployed_model_id: str = ""
    model: str = ""
    model_version_id: str = ""
    model_display_name: str = ""

    def response_fields(self) -> dict[str, str]:
        """Vertex's ``PredictResponse`` fields beside ``predictions``, those that are known."""
        fields = {
            "deployedModelId": self.deployed_model_id,
            "model": self.model,
            "modelDisplayName": self.model_display_name,
            "modelVersionId": self.model_version_id,
        }
        return {name: value for name, value in fields.items() if value}

    def version_label(self, fingerprint: str) -> str:
        """``<model id>@<version>`` from the registry, else the export's own fingerprint."""
        if self.model and self.model_version_id:
            return f"{self.model.rsplit('/', 1)[-1]}@{self.model_version_id}"
        return f"sha256:{fingerprint}"


class EndpointNotFoundError(LookupError):
    """No endpoint by that name (HTTP 404)."""


class NothingDeployedError(LookupError):
    """The endpoint exists but serves no model (HTTP 400, as Vertex answers)."""


class EndpointRouter(Protocol):
    """Local endpoints: which deployed version answers a request (by the traffic split)."""

    def route(self, project: str, location: str, endpoint_id: str) -> Deployment: ...

    def endpoint_names(self) -> list[str]:
        """Resource names ``projects/P/locations/L/endpoints/E`` of every endpoint."""
        ...


# Vertex AI's custom container contract: the routes and port it sends requests to, as the model's
# containerSpec registers them (targets/vertex.py) and the container reads them (AIP_*).
CONTAINER_PORT = 8080
CONTAINER_PREDICT_ROUTE = "/predict"
CONTAINER_HEALTH_ROUTE = "/health"
MODEL_DISPLAY_NAME_ENV = "IMAGE_CLASSIFIER_MODEL_DISPLAY_NAME"
"""The registered model's display name, which the upload sets in the serving container's
environment (Vertex AI sets no such variable): the try-it page's title."""


@dataclass(frozen=True)
class ContainerModel:
    """The one model of a serving container, and the routes Vertex AI sends requests to."""

    storage_uri: str
    predict_route: str = CONTAINER_PREDICT_ROUTE
    health_route: str = CONTAINER_HEALTH_ROUTE
    deployed_model_id: str = ""
    model_display_name: str = ""

    def deployment(self) -> Deployment:
        return Deployment(
            self.storage_uri,
            deployed_model_id=self.deployed_model_id,
            model_display_name=self.model_display_name,
        )
