"""Pipeline step on the gate's closed branch: say plainly why nothing was deployed."""

from kfp import dsl

from components.images import PLACEHOLDERS


@dsl.component(base_image=PLACEHOLDERS.light, install_kfp_package=False)
def report_not_deployed(reason: str) -> str:
    """Logs the reason and returns an empty model version for the pipeline's outputs."""
    import logging

    logging.getLogger(__name__).warning("model not deployed: %s", reason)
    return ""
