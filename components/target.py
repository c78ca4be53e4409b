"""Pipeline step: settle where models are registered and served, before anything trains.

An empty ``project`` or ``location`` means the pipeline job's own: Vertex AI fills the
``job_project``/``job_location`` placeholders, so a run started from the console with every
parameter at its default works. A target that cannot work fails here, in seconds.
"""

from typing import NamedTuple

from kfp import dsl

from components.images import PLACEHOLDERS


@dsl.component(base_image=PLACEHOLDERS.light, install_kfp_package=False)
def resolve_target(
    target: str,
    project: str,
    location: str,
    local_state_dir: str,
    job_project: str,
    job_location: str,
) -> NamedTuple("Target", [("project", str), ("location", str)]):
    """Returns the project and location of the model registry and endpoints."""
    import logging
    from collections import namedtuple

    from components.lib.targets import resolve_target as resolve

    project, location = resolve(
        target, project, location, local_state_dir, job_project, job_location
    )
    logging.getLogger(__name__).info("target %s: %s/%s", target, project, location)
    return namedtuple("Target", ["project", "location"])(project, location)
