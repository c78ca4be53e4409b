"""Which versions an endpoint serves, on either target, and where each one's request samples
are: what the drift monitor and the canary review start from."""

from __future__ import annotations

import os
from dataclasses import dataclass

from components.lib.monitoring.sampler import requests_root, sampling_destination
from components.lib.targets import endpoint_registry, model_registry
from components.lib.targets.base import LOCAL, Deployment, ModelVersion, most_traffic


@dataclass(frozen=True)
class ServedVersion:
    deployment: Deployment
    share: int  # percent of the endpoint's traffic
    version: ModelVersion
    samples_uri: str  # where the server writes its request samples

    @property
    def label(self) -> str:
        return f"{self.deployment.id} ({self.version.resource_name}, {self.share}%)"


@dataclass(frozen=True)
class ServedEndpoint:
    name: str
    endpoints: object  # local.EndpointRegistry or vertex.VertexEndpoints
    versions: list[ServedVersion]

    @property
    def champion(self) -> ServedVersion:
        """The version with most traffic."""
        split = {served.deployment.id: served.share for served in self.versions}
        best = most_traffic([served.deployment for served in self.versions], split)
        return next(served for served in self.versions if served.deployment is best)


class NotServedError(LookupError):
    """No such endpoint, or nothing deployed on it."""


class NoSamplesError(ValueError):
    """The served version has no request sample yet (no traffic since it was deployed)."""


def served_endpoint(
    target: str, local_state_dir: str, project: str, location: str, display_name: str
) -> ServedEndpoint:
    """The endpoint ``display_name`` of ``target`` and the versions it serves."""
    endpoints = endpoint_registry(target, local_state_dir, project, location)
    registry = model_registry(target, local_state_dir, project, location)
    try:
        deployments, split, name = endpoints.deployments(display_name)
    except KeyError as error:
        raise NotServedError(str(error.args[0])) from None
    versions = []
    for deployment in deployments:
        version = registry.get_version(deployment.model, deployment.version_id)
        root = (
            os.path.join(local_state_dir, "monitoring")
            if target == LOCAL
            else requests_root(version.artifact_uri)
        )
        versions.append(
            ServedVersion(
                deployment,
                split.get(deployment.id, 0),
                version,
                sampling_destination(root, deployment.id),
            )
        )
    if not any(served.share for served in versions):
        raise NotServedError(f"endpoint {name} serves no model")
    return ServedEndpoint(name, endpoints, versions)


def check_endpoint_drift(
    target: str,
    local_state_dir: str,
    project: str,
    location: str,
    display_name: str,
    report_dir: str,
    sample_size: int,
    alpha: float,
    permutations: int,
    seed: int = 0,
):
    """The drift test of the endpoint's champion: its newest request samples against its
    reference; the verdict (``drift.Verdict``) and the report's files. NoSamplesError when there
    is no sample yet; NotServedError, NoReferenceError as their names say."""
    from components.lib.monitoring.drift import compare
    from components.lib.monitoring.reference import load_reference
    from components.lib.monitoring.report import write_report
    from components.lib.monitoring.sampler import read_recent

    endpoint = served_endpoint(target, local_state_dir, project, location, display_name)
    champion = endpoint.champion
    reference = load_reference(champion.version.artifact_uri)
    sample, windows = read_recent(champion.samples_uri, sample_size)
    if not len(sample.confidences):
        raise NoSamplesError(
            f"no request samples under {champion.samples_uri} yet: the server writes them every "
            "--sample-interval-s once it has answered requests"
        )
    facts = {
        "endpoint": endpoint.name,
        "served version": champion.label,
        "request samples": f"{champion.samples_uri} ({windows} newest windows)",
    }
    verdict = compare(reference, sample, alpha, permutations, seed)
    return verdict, write_report(report_dir, verdict, reference, sample, facts)
