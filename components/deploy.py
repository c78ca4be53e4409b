"""Pipeline step: serve a registered model version on the endpoint with its traffic share.

The new version gets ``traffic_percentage``; the version that served most traffic before keeps
the rest; every other deployed version is retired (``components.lib.targets.base.plan_traffic``).
"""

from kfp import dsl

from components.images import PLACEHOLDERS
from components.lib.artifacts import VertexEndpoint


@dsl.component(base_image=PLACEHOLDERS.light, install_kfp_package=False)
def deploy_model(
    model_version: str,
    endpoint_display_name: str,
    machine_type: str,
    min_replicas: int,
    max_replicas: int,
    accelerator_type: str,
    accelerator_count: int,
    traffic_percentage: int,
    service_account: str,
    target: str,
    project: str,
    location: str,
    local_state_dir: str,
    vertex_endpoint: dsl.Output[VertexEndpoint],
) -> str:
    """Returns the endpoint's resource name, ``projects/P/locations/L/endpoints/E``.

    A version that already serves with the requested share is not deployed again.
    """
    import logging

    from components.lib.artifacts import describe_resource
    from components.lib.targets import Serving, endpoint_registry, model_registry, resource_uri

    serving = Serving(
        machine_type=machine_type,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        accelerator_type=accelerator_type,
        accelerator_count=accelerator_count,
        traffic_percentage=traffic_percentage,
        service_account=service_account,
    )
    model, version_id = model_version.rsplit("@", 1)
    version = model_registry(target, local_state_dir, project, location).get_version(
        model, version_id
    )
    endpoint = endpoint_registry(target, local_state_dir, project, location, serving).deploy(
        endpoint_display_name, version
    )
    describe_resource(
        vertex_endpoint, endpoint["name"], resource_uri(target, location, endpoint["name"])
    )
    done = "serves" if endpoint["changed"] else "already serves (not redeployed)"
    logging.getLogger(__name__).info(
        "%s %s %s; traffic split %s",
        endpoint["name"],
        done,
        model_version,
        endpoint["trafficSplit"],
    )
    return endpoint["name"]
