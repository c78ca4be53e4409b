"""What every target answers: the declared interface of a model registry and its endpoints.

The local target (``local.py``) and Vertex AI (``vertex.py``) implement these protocols; the
steps call them through ``components.lib.targets.model_registry``/``endpoint_registry``, the one
place where the target is chosen, and never branch on it themselves.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

LOCAL = "local"
VERTEX = "vertex"
TARGETS = (LOCAL, VERTEX)


@dataclass(frozen=True)
class Serving:
    """How an endpoint serves a deployed version: machines, autoscaling and traffic share."""

    machine_type: str = "n1-standard-2"
    min_replicas: int = 1
    max_replicas: int = 1
    accelerator_type: str = ""
    accelerator_count: int = 0
    traffic_percentage: int = 100
    service_account: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError(
                f"replicas: need 1 <= min_replicas ({self.min_replicas}) <= max_replicas "
                f"({self.max_replicas})"
            )
        if not 1 <= self.traffic_percentage <= 100:
            raise ValueError(
                f"traffic_percentage must be 1..100 (the new version's share), got "
                f"{self.traffic_percentage}"
            )
        if bool(self.accelerator_type) != (self.accelerator_count > 0):
            raise ValueError(
                "set accelerator_type and accelerator_count together (both empty/0 for CPU only)"
            )


DEFAULT_SERVING = Serving()


DEFAULT_ALIAS = "default"


def resource_id(display_name: str) -> str:
    """A Vertex-style resource id (lowercase letters, digits, dashes) from a display name."""
    slug = re.sub(r"[^a-z0-9]+", "-", display_name.lower()).strip("-")
    if not slug:
        raise ValueError(f"display name {display_name!r} has no letters or digits to name it by")
    return slug[:63]


def version_alias(text: str) -> str:
    """A model version alias (starts with a letter; letters, digits and dashes) naming ``text``."""
    slug = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    if not slug[:1].isalpha():
        slug = f"run-{slug}"
    return slug[:63].rstrip("-")


def most_traffic(deployed_models: list[dict[str, Any]], split: dict[str, int]) -> tuple[str, str]:
    """(model, version id) of the deployed model with the largest share of ``split``."""
    served = max(deployed_models, key=lambda deployed: split.get(deployed["id"], 0))
    return served["model"], served["modelVersionId"]


@dataclass(frozen=True)
class ModelVersion:
    """One registered version: ``projects/P/locations/L/models/M@VERSION``."""

    model: str
    version_id: str
    display_name: str
    artifact_uri: str

    @property
    def resource_name(self) -> str:
        return f"{self.model}@{self.version_id}"


class ModelRegistryTarget(Protocol):
    """A model registry: display name -> model, with numbered versions and aliases."""

    def upload_version(
        self,
        display_name: str,
        artifact_dir: str,
        metrics: dict[str, float],
        labels: dict[str, str],
        aliases: Sequence[str] = (),
        description: str = "",
    ) -> ModelVersion: ...

    def get_version(self, model: str, version_id: str) -> ModelVersion: ...


class EndpointTarget(Protocol):
    """Endpoints, found by display name, that serve model versions with a traffic split."""

    def served_version(self, display_name: str) -> tuple[str, str] | None: ...

    def deploy(self, display_name: str, version: ModelVersion) -> dict[str, Any]: ...
