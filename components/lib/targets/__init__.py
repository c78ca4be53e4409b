"""Pick where models are registered and served from the pipeline's ``target`` parameter.

One compiled pipeline serves every target: the choice is a run-time parameter, not a second copy.
Both targets answer the same calls (``upload_version``/``get_version``, ``deploy``). The Vertex
target's module is imported only when it is chosen.
"""

from __future__ import annotations

from components.lib.targets.base import (
    DEFAULT_SERVING,
    LOCAL,
    TARGETS,
    VERTEX,
    EndpointTarget,
    ModelRegistryTarget,
    Serving,
)
from components.lib.targets.local import EndpointRegistry, ModelRegistry


def _check(target: str, local_state_dir: str, project: str, location: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if target == LOCAL and not local_state_dir:
        raise ValueError("target 'local' needs local_state_dir: the folder of the local registry")
    if target == VERTEX and not (project and location):
        raise ValueError(
            "target 'vertex' needs the pipeline parameters project and location "
            f"(got project={project!r}, location={location!r})"
        )


def model_registry(
    target: str,
    local_state_dir: str,
    project: str,
    location: str,
    serving_image: str = "",
    gpu: bool = False,
) -> ModelRegistryTarget:
    """The model registry of ``target``; on Vertex, uploads are served by ``serving_image``.

    An empty ``serving_image`` picks the project's serving image, ``prebuilt`` Vertex AI's
    prebuilt TensorFlow image (``gpu``: its GPU variant); the local registry needs no image.
    """
    _check(target, local_state_dir, project, location)
    if target == LOCAL:
        return ModelRegistry(local_state_dir, project, location)
    from components.lib.targets.vertex import VertexModelRegistry

    return VertexModelRegistry(project, location, serving_image, gpu)


def endpoint_registry(
    target: str,
    local_state_dir: str,
    project: str,
    location: str,
    serving: Serving = DEFAULT_SERVING,
) -> EndpointTarget:
    """The endpoints of ``target``; the local endpoint serves in-process, ignoring ``serving``."""
    _check(target, local_state_dir, project, location)
    if target == LOCAL:
        return EndpointRegistry(local_state_dir, project, location)
    from components.lib.targets.vertex import VertexEndpoints

    return VertexEndpoints(project, location, serving)


def resource_uri(target: str, location: str, resource_name: str) -> str | None:
    """The URI of a ``google.Vertex*`` artifact: the REST address on Vertex, none locally."""
    if target != VERTEX:
        return None
    return f"https://{location}-aiplatform.googleapis.com/v1/{resource_name}"


def champion_model_dir(
    target: str, local_state_dir: str, project: str, location: str, endpoint_display_name: str
) -> str | None:
    """The artifact folder of the version that takes most of the endpoint's traffic (the champion),
    or None when the endpoint does not exist or serves nothing."""
    endpoints = endpoint_registry(target, local_state_dir, project, location)
    served = endpoints.served_version(endpoint_display_name)
    if served is None:
        return None
    registry = model_registry(target, local_state_dir, project, location)
    return registry.get_version(*served).artifact_uri
