"""Pipeline step: serve a registered model version on the endpoint with all traffic."""

from kfp import dsl

from components import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def deploy_model(
    model_version: str,
    endpoint_display_name: str,
    target: str,
    project: str,
    location: str,
    local_state_dir: str,
) -> str:
    """Returns the endpoint's resource name, ``projects/P/locations/L/endpoints/E``."""
    import logging

    from components.lib.targets import endpoint_registry, model_registry

    model, version_id = model_version.rsplit("@", 1)
    version = model_registry(target, local_state_dir, project, location).get_version(
        model, version_id
    )
    endpoint = endpoint_registry(target, local_state_dir, project, location).deploy(
        endpoint_display_name, version
    )
    logging.getLogger(__name__).info(
        "%s now serves %s with 100%% of traffic", endpoint["name"], model_version
    )
    return endpoint["name"]
