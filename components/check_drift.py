"""Pipeline step: do the photos the endpoint receives still look like the training photos?"""

from kfp import dsl

from components.images import PLACEHOLDERS


@dsl.component(base_image=PLACEHOLDERS.cpu, install_kfp_package=False)
def check_drift(
    target: str,
    project: str,
    location: str,
    local_state_dir: str,
    endpoint_display_name: str,
    sample_size: int,
    alpha: float,
    permutations: int,
    report: dsl.Output[dsl.HTML],
    drift_metrics: dsl.Output[dsl.Metrics],
) -> bool:
    """The served version's newest request samples against its training reference
    (``components.lib.targets.served.check_endpoint_drift``). Returns whether drift holds; the
    HTML report and the metrics ``drift`` (0/1), ``p_value`` and the sample sizes are the
    step's outputs. No sample yet (no traffic) is no drift, logged."""
    import json
    import logging
    import os
    import shutil
    import tempfile

    from components.lib.artifacts import write_metadata_file
    from components.lib.targets.served import NoSamplesError, check_endpoint_drift

    log = logging.getLogger(__name__)
    with tempfile.TemporaryDirectory() as folder:
        try:
            verdict, written = check_endpoint_drift(
                target,
                local_state_dir,
                project,
                location,
                endpoint_display_name,
                folder,
                sample_size,
                alpha,
                permutations,
            )
        except NoSamplesError as error:
            log.warning("%s", error)
            drift_metrics.log_metric("sample_size", 0)
            write_metadata_file(drift_metrics)
            os.makedirs(os.path.dirname(report.path), exist_ok=True)
            with open(report.path, "w") as file:
                file.write(f"<p>{error}</p>")
            return False
        os.makedirs(os.path.dirname(report.path), exist_ok=True)
        shutil.copy(written["report.html"], report.path)
    drift_metrics.log_metric("drift", int(verdict.drift))
    drift_metrics.log_metric("p_value", verdict.p_value)
    drift_metrics.log_metric("sample_size", verdict.sample_size)
    drift_metrics.log_metric("reference_size", verdict.reference_size)
    write_metadata_file(drift_metrics)
    log.info("drift verdict: %s", json.dumps(verdict.to_dict()))
    return verdict.drift
