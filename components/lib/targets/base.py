"""What every target answers: the declared interface of a model registry and its endpoints.

The local target (``local.py``) and Vertex AI (``vertex.py``) implement these protocols; the
steps call them through ``components.lib.targets.model_registry``/``endpoint_registry``, the one
place where the target is chosen, and never branch on it themselves.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from components.lib.targets.machines import check_machine

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
                f"serving_accelerator_type {self.accelerator_type!r} and "
                f"serving_accelerator_count {self.accelerator_count}: set both (both empty/0 for "
                "CPU only)"
            )
        check_machine(self.machine_type, self.accelerator_type, self.accelerator_count)

    @classmethod
    def from_parameters(cls, values: dict[str, Any]) -> Serving:
        """The settings from the pipeline parameters that carry them (``SERVING_PARAMETERS``);
        ValueError, in one line, for settings Vertex AI would refuse at the deploy step."""
        return cls(**{field: values[name] for name, field in SERVING_PARAMETERS.items()})


DEFAULT_SERVING = Serving()
SERVING_PARAMETERS = {
    "machine_type": "machine_type",
    "min_replicas": "min_replicas",
    "max_replicas": "max_replicas",
    "serving_accelerator_type": "accelerator_type",
    "serving_accelerator_count": "accelerator_count",
    "traffic_percentage": "traffic_percentage",
    "serving_service_account": "service_account",
}
"""Pipeline parameter -> ``Serving`` field."""


@dataclass(frozen=True)
class Registration:
    """Where a run registers and serves its model, and under which names (the pipeline
    parameters of the same names): ``target`` (``local`` or ``vertex``), the project and region
    (empty: the pipeline job's own), the local registry's folder (target ``local``), the model
    and endpoint display names (empty: named after the data, ``naming.display_names``). (The
    prediction image's default is the serving image built beside the steps' images:
    ``components.images``, compiled in.)"""

    target: str = VERTEX
    project: str = ""
    location: str = ""
    local_state_dir: str = ""
    model_display_name: str = ""
    endpoint_display_name: str = ""


DEFAULT_ALIAS = "default"


def slug(text: str) -> str:
    """``text`` in lowercase letters, digits and single dashes, as Vertex AI's ids are."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def resource_id(display_name: str) -> str:
    """A Vertex-style resource id (lowercase letters, digits, dashes) from a display name."""
    identifier = slug(display_name)
    if not identifier:
        raise ValueError(f"display name {display_name!r} has no letters or digits to name it by")
    return identifier[:63]


def version_alias(text: str) -> str:
    """A model version alias (starts with a letter; letters, digits and dashes) naming ``text``."""
    slug = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    if not slug[:1].isalpha():
        slug = f"run-{slug}"
    return slug[:63].rstrip("-")


@dataclass(frozen=True)
class Deployment:
    """One model version deployed on an endpoint, under the endpoint's own deployed-model id."""

    id: str
    model: str
    version_id: str


NEW_DEPLOYMENT = "0"
"""Key of a traffic split that stands for the version being deployed (Vertex AI's convention)."""


def most_traffic(deployments: Sequence[Deployment], split: dict[str, int]) -> Deployment | None:
    """The deployment with the largest share of ``split``; None when none has any traffic.

    Ties go to the first in ``deployments``, so the answer does not depend on dict order.
    """
    serving = [d for d in deployments if split.get(d.id, 0) > 0]
    return max(serving, key=lambda d: split[d.id]) if serving else None


@dataclass(frozen=True)
class TrafficPlan:
    """What a deploy changes on an endpoint: the new split, and the deployments it retires.

    ``existing`` is the deployment that already serves the version (then nothing is deployed,
    only the split changes); otherwise ``split`` names the version to deploy ``NEW_DEPLOYMENT``.
    """

    existing: Deployment | None
    split: dict[str, int]
    retire: tuple[Deployment, ...]
    unchanged: bool


def plan_traffic(
    deployments: Sequence[Deployment],
    split: dict[str, int],
    model: str,
    version_id: str,
    traffic_percentage: int,
) -> TrafficPlan:
    """The canary rule, the same for every target.

    The version gets ``traffic_percentage``; the deployment that took most traffic before (the
    champion) keeps the rest; every other deployment is retired. At 100%, or with nothing else
    serving, the version takes all traffic and everything else is retired. A plan that changes
    nothing (a re-run of the same model with the same share) is ``unchanged``.
    """
    existing = next(
        (d for d in deployments if (d.model, d.version_id) == (model, version_id)), None
    )
    others = [d for d in deployments if d is not existing]
    previous = most_traffic(others, split) if traffic_percentage < 100 else None
    key = existing.id if existing else NEW_DEPLOYMENT
    if previous is None:
        target = {key: 100}
    else:
        target = {key: traffic_percentage, previous.id: 100 - traffic_percentage}
    retire = tuple(d for d in others if d is not previous)
    current = {k: v for k, v in split.items() if v > 0}
    unchanged = existing is not None and not retire and current == target
    return TrafficPlan(existing, target, retire, unchanged)


def pick_deployment(split: dict[str, int], rng: random.Random) -> str:
    """The deployed-model id that serves one request, drawn with the split's weights."""
    ids = sorted(split)
    return rng.choices(ids, weights=[split[i] for i in ids])[0]


@dataclass(frozen=True)
class ModelVersion:
    """One registered version: ``projects/P/locations/L/models/M@VERSION``.

    ``artifact_uri`` is where the registry keeps the model (the local registry copies it in);
    ``source_uri`` the artifact it was registered from, by which a re-run finds it again.
    """

    model: str
    version_id: str
    display_name: str
    artifact_uri: str
    source_uri: str = ""

    @property
    def resource_name(self) -> str:
        return f"{self.model}@{self.version_id}"


EVAL_FINGERPRINT = "eval_fingerprint"
ROWS_PATH = "row_based_metrics_path"
"""Where a registered evaluation's metadata keeps its fingerprint and its per-photo results'
URI (the latter under the key Google's own evaluation importer uses)."""


@dataclass(frozen=True)
class ModelEvaluationRecord:
    """A version's evaluation as Vertex AI's Model Registry keeps it (a ``ModelEvaluation``).

    ``metrics`` follow ``metrics_schema_uri`` (the classification metrics schema, which the
    console's Evaluate tab renders); ``slices`` are ``{"dimension", "value", "metrics"}`` dicts
    (``ModelEvaluationSlice``s, one per class). ``fingerprint`` names the eval photos and
    ``rows_uri`` their per-photo results, so that a later run on the same photos can trust the
    record instead of scoring the model again; ``metadata`` is the rest of the evaluation's
    metadata. ``name`` is set once it is registered.
    """

    display_name: str
    metrics_schema_uri: str
    metrics: dict[str, Any]
    fingerprint: str
    rows_uri: str
    slices: Sequence[dict[str, Any]] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    name: str = ""

    def registry_metadata(self) -> dict[str, Any]:
        """``metadata`` with the fingerprint and the rows' URI, as the registry stores it."""
        return {**self.metadata, EVAL_FINGERPRINT: self.fingerprint, ROWS_PATH: self.rows_uri}

    @classmethod
    def from_registry(
        cls,
        name: str,
        display_name: str,
        metrics_schema_uri: str,
        metrics: dict[str, Any],
        metadata: dict[str, Any],
        slices: Sequence[dict[str, Any]] = (),
    ) -> ModelEvaluationRecord:
        """A stored evaluation read back (``registry_metadata``'s inverse)."""
        rest = {k: v for k, v in metadata.items() if k not in (EVAL_FINGERPRINT, ROWS_PATH)}
        return cls(
            display_name=display_name,
            metrics_schema_uri=metrics_schema_uri,
            metrics=metrics,
            fingerprint=str(metadata.get(EVAL_FINGERPRINT, "")),
            rows_uri=str(metadata.get(ROWS_PATH, "")),
            slices=tuple(slices),
            metadata=rest,
            name=name,
        )


def split_reference(reference: str) -> tuple[str, str]:
    """What a person types for a version, ``MODEL[@VERSION|@ALIAS]``, as (model, version).

    ``MODEL`` is a display name (``mugs-classifier``), a model id, or a resource name
    (``projects/P/locations/L/models/M``); after ``@`` comes a version id (``3``) or an alias
    (``champion``); without it, the ``default`` alias (the newest upload), as Vertex AI reads it.
    """
    name, _, version = reference.strip().partition("@")
    if not name or "@" in version:
        raise ValueError(f"model {reference!r}: write MODEL, MODEL@VERSION or MODEL@ALIAS")
    return name, version or DEFAULT_ALIAS


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
    ) -> ModelVersion:
        """Register ``artifact_dir`` as the model's new default version; an artifact that is
        already registered returns that version instead of a duplicate."""
        ...

    def find_version(self, display_name: str, source_uri: str) -> ModelVersion | None:
        """The version of the model ``display_name`` registered from ``source_uri``, if any."""
        ...

    def resolve(self, reference: str) -> ModelVersion:
        """The version named by ``reference`` (``split_reference``); KeyError if none is."""
        ...

    def get_version(self, model: str, version_id: str) -> ModelVersion:
        """``model`` (resource name) at ``version_id``."""
        ...

    def import_evaluation(
        self, version: ModelVersion, evaluation: ModelEvaluationRecord
    ) -> ModelEvaluationRecord:
        """Attach ``evaluation`` to ``version`` (with its slices), named; a version that already
        has an evaluation of the same eval photos (fingerprint) returns that one instead."""
        ...

    def list_evaluations(self, version: ModelVersion) -> list[ModelEvaluationRecord]:
        """The evaluations of ``version``, oldest first (none: an empty list)."""
        ...


class EndpointTarget(Protocol):
    """Endpoints, found by display name, that serve model versions with a traffic split."""

    def served_version(self, display_name: str) -> tuple[str, str] | None:
        """(model, version id) of the deployment with most traffic; None if nothing serves."""
        ...

    def deploy(self, display_name: str, version: ModelVersion) -> dict[str, Any]:
        """Serve ``version`` by ``plan_traffic``'s rule (creating the endpoint on first use);
        returns the endpoint's name, display name, deployments, split and whether it changed."""
        ...


RunValue = str | int | float


class ExperimentTarget(Protocol):
    """Where runs are recorded to be compared: an experiment holds runs, each with its
    parameters and final metrics (Vertex AI Experiments; locally, JSON files)."""

    def record_run(
        self,
        experiment: str,
        run: str,
        params: dict[str, RunValue],
        metrics: dict[str, float],
    ) -> str:
        """Record ``run`` in ``experiment`` (created on first use); returns where it is."""
        ...
