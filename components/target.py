"""Pipeline step: settle where models are registered and served, before anything trains.

An empty ``project`` or ``location`` means the pipeline job's own: Vertex AI fills the
``job_project``/``job_location`` placeholders, so a run started from the console with every
parameter at its default works. The model's and endpoint's display names are settled here too:
those given, else named after the data (``components.lib.targets.naming``). A target that
cannot work, and serving settings that the deploy step would have refused (after training, and
after upload moved ``default``), fail here, in seconds.
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
    machine_type: str,
    min_replicas: int,
    max_replicas: int,
    serving_accelerator_type: str,
    serving_accelerator_count: int,
    traffic_percentage: int,
    serving_service_account: str,
    data_uri: str,
    model_display_name: str,
    endpoint_display_name: str,
) -> NamedTuple(
    "Target",
    [
        ("project", str),
        ("location", str),
        ("model_display_name", str),
        ("endpoint_display_name", str),
    ],
):
    """Returns the project and location of the model registry and endpoints, and the model's and
    endpoint's display names."""
    import logging
    from collections import namedtuple

    from components.lib.targets import Serving
    from components.lib.targets import resolve_target as resolve
    from components.lib.targets.naming import display_names

    Serving.from_parameters(
        {
            "machine_type": machine_type,
            "min_replicas": min_replicas,
            "max_replicas": max_replicas,
            "serving_accelerator_type": serving_accelerator_type,
            "serving_accelerator_count": serving_accelerator_count,
            "traffic_percentage": traffic_percentage,
            "serving_service_account": serving_service_account,
        }
    )
    project, location = resolve(
        target, project, location, local_state_dir, job_project, job_location
    )
    model, endpoint = display_names(data_uri, model_display_name, endpoint_display_name)
    logging.getLogger(__name__).info(
        "target %s: %s/%s, model %r on endpoint %r", target, project, location, model, endpoint
    )
    names = ["project", "location", "model_display_name", "endpoint_display_name"]
    return namedtuple("Target", names)(project, location, model, endpoint)
