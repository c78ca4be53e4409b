"""Pipeline step: start the training pipeline (its compiled file or published template)."""

from kfp import dsl

from components.images import PLACEHOLDERS


@dsl.component(base_image=PLACEHOLDERS.light, install_kfp_package=False)
def start_training(
    template: str,
    project: str,
    location: str,
    pipeline_root: str,
    parameter_values: dict,
    service_account: str,
) -> str:
    """Submits the run (``components.lib.targets.retrain.start_training``) and returns its
    resource name; the run goes on after this step ends."""
    from components.lib.targets.retrain import start_training as submit

    return submit(
        template,
        project,
        location,
        pipeline_root,
        parameter_values,
        service_account,
        reason="the photos drifted",
    )
