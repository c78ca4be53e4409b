"""Pick where models are registered and served from the pipeline's ``target`` parameter.

One compiled pipeline serves every target: the choice is a run-time parameter, not a second copy.
Both targets implement the protocols of ``base`` (``ModelRegistryTarget``, ``EndpointTarget``);
this module is the one place that picks the implementation. The Vertex target's module is
imported only when it is chosen.
"""

from __future__ import annotations

from components.lib.targets.base import (
    DEFAULT_SERVING,
    LOCAL,
    TARGETS,
    VERTEX,
    EndpointTarget,
    ExperimentTarget,
    ModelRegistryTarget,
    ModelVersion,
    Serving,
)
from components.lib.targets.local import EndpointRegistry, Experiments, ModelRegistry


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


def _resolved(placeholder_value: str) -> str:
    """A runtime placeholder's value, or "" where no backend resolved it."""
    return "" if placeholder_value.startswith("{{$") else placeholder_value


def resolve_target(
    target: str,
    project: str,
    location: str,
    local_state_dir: str,
    job_project: str,
    job_location: str,
) -> tuple[str, str]:
    """The (project, location) that models and endpoints live in, checked for ``target``.

    An empty ``project`` or ``location`` means the pipeline job's own (``job_project``,
    ``job_location``: what Vertex AI puts in the ``{{$.pipeline_google_cloud_*}}`` placeholders,
    and the local runner in their place), so a run started from the console with every
    parameter at its default registers and serves in the job's project and region.
    """
    resolved = (project or _resolved(job_project), location or _resolved(job_location))
    _check(target, local_state_dir, *resolved)
    return resolved


def model_registry(
    target: str,
    local_state_dir: str,
    project: str,
    location: str,
    serving_image: str = "",
    gpu: bool = False,
) -> ModelRegistryTarget:
    """The model registry of ``target``; on Vertex, uploads are served by ``serving_image``.

    ``serving_image`` is an image URI (the project's serving image by default, compiled into
    the pipeline), or ``prebuilt``: Vertex AI's prebuilt TensorFlow image (``gpu``: its GPU
    variant); the local registry needs no image.
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
    """The endpoints of ``target``; ``serving``: machines (Vertex only) and the traffic share."""
    _check(target, local_state_dir, project, location)
    if target == LOCAL:
        return EndpointRegistry(local_state_dir, project, location, serving)
    from components.lib.targets.vertex import VertexEndpoints

    return VertexEndpoints(project, location, serving)


def experiments(target: str, local_state_dir: str, project: str, location: str) -> ExperimentTarget:
    """Where ``target`` records runs: Vertex AI Experiments, or JSON files in the state folder."""
    _check(target, local_state_dir, project, location)
    if target == LOCAL:
        return Experiments(local_state_dir, project, location)
    from components.lib.targets.vertex import VertexExperiments

    return VertexExperiments(project, location)


def resource_uri(target: str, location: str, resource_name: str) -> str | None:
    """The URI of a ``google.Vertex*`` artifact: the REST address on Vertex, none locally."""
    if target != VERTEX:
        return None
    return f"https://{location}-aiplatform.googleapis.com/v1/{resource_name}"


def champion_version(
    target: str, local_state_dir: str, project: str, location: str, endpoint_display_name: str
) -> ModelVersion | None:
    """The version that takes most of the endpoint's traffic (the champion), or None when the
    endpoint does not exist or serves nothing."""
    endpoints = endpoint_registry(target, local_state_dir, project, location)
    served = endpoints.served_version(endpoint_display_name)
    if served is None:
        return None
    return model_registry(target, local_state_dir, project, location).get_version(*served)


def needs_cloud(target: str) -> bool:
    """Whether ``target`` lives in a Google Cloud project (a project, a region, credentials and a
    ``gs://`` folder), not in a local state folder."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    return target != LOCAL
