"""Pick where models are registered and served from the pipeline's ``target`` parameter.

One compiled pipeline serves every target: the choice is a run-time parameter, not a second copy.
"""

from __future__ import annotations

from components.lib.registry import EndpointRegistry, ModelRegistry, resource_id

LOCAL = "local"
VERTEX = "vertex"
TARGETS = (LOCAL, VERTEX)


def _check_local(target: str, local_state_dir: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if target == VERTEX:
        raise NotImplementedError(
            "the 'vertex' target (Vertex AI Model Registry and endpoints) is not available yet; "
            "run with target='local' (python -m pipeline.run --local)"
        )
    if not local_state_dir:
        raise ValueError("target 'local' needs local_state_dir: the folder of the local registry")


def model_registry(target: str, local_state_dir: str, project: str, location: str) -> ModelRegistry:
    _check_local(target, local_state_dir)
    return ModelRegistry(local_state_dir, project, location)


def endpoint_registry(
    target: str, local_state_dir: str, project: str, location: str
) -> EndpointRegistry:
    _check_local(target, local_state_dir)
    return EndpointRegistry(local_state_dir, project, location)


def champion_model_dir(
    target: str, local_state_dir: str, project: str, location: str, endpoint_display_name: str
) -> str | None:
    """The artifact folder of the version that takes most of the endpoint's traffic (the champion),
    or None when the endpoint does not exist or serves nothing."""
    endpoint = endpoint_registry(target, local_state_dir, project, location).get(
        resource_id(endpoint_display_name)
    )
    if not endpoint or not endpoint.get("deployedModels"):
        return None
    traffic = endpoint.get("trafficSplit", {})
    served = max(endpoint["deployedModels"], key=lambda deployed: traffic.get(deployed["id"], 0))
    registry = model_registry(target, local_state_dir, project, location)
    return registry.get_version(served["model"], served["modelVersionId"]).artifact_uri
