"""Pipeline step: promote the endpoint's canary, or roll it back, by the canary rule."""

from kfp import dsl

from components.images import PLACEHOLDERS


@dsl.component(base_image=PLACEHOLDERS.cpu, install_kfp_package=False)
def review_canary(
    target: str,
    project: str,
    location: str,
    local_state_dir: str,
    endpoint_display_name: str,
    metrics_url: str,
    since_hours: float,
    feedback_uri: str,
    min_requests: int,
    max_error_rate: float,
    max_latency_p95_ms: float,
    min_feedback: int,
    max_accuracy_drop: float,
) -> str:
    """``components.lib.targets.canary.review_endpoint``: returns the action taken
    (``promote``, ``rollback``, ``wait``, or ``none`` without a canary); the reasons go to the
    log and, with the decision, to the endpoint."""
    import logging

    from components.lib.monitoring.canary import CanaryRule
    from components.lib.targets.canary import review_endpoint

    rule = CanaryRule(
        min_requests, max_error_rate, max_latency_p95_ms, min_feedback, max_accuracy_drop
    )
    endpoint, decision = review_endpoint(
        target,
        local_state_dir,
        project,
        location,
        endpoint_display_name,
        rule,
        metrics_url,
        since_hours,
        feedback_uri,
    )
    if decision is None:
        logging.getLogger(__name__).info("no canary on %s", endpoint)
        return "none"
    logging.getLogger(__name__).info("%s: %s", endpoint, decision.summary())
    return decision.action
