"""Pipeline step: register the trained model as a new version in the model registry."""

from kfp import dsl

from components import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def upload_model(
    model: dsl.Input[dsl.Model],
    accuracy: float,
    champion_accuracy: float,
    decision: str,
    model_display_name: str,
    pipeline_job: str,
    target: str,
    project: str,
    location: str,
    local_state_dir: str,
) -> str:
    """Returns the new version's resource name, ``projects/P/locations/L/models/M@N``.

    The version records both accuracies (champion_accuracy -1: none served) and the decision's
    reason, so the registry says why each version was deployed.
    """
    import logging

    from components.lib.targets import model_registry

    registry = model_registry(target, local_state_dir, project, location)
    champion = f"{champion_accuracy:.4f}" if champion_accuracy >= 0 else "none"
    version = registry.upload_version(
        display_name=model_display_name,
        artifact_dir=model.path,
        metrics={"accuracy": accuracy, "champion_accuracy": champion_accuracy},
        labels={
            "pipeline_job": pipeline_job,
            "accuracy": f"{accuracy:.4f}",
            "champion_accuracy": champion,
        },
        description=decision,
    )
    logging.getLogger(__name__).info("registered %s", version.resource_name)
    return version.resource_name
