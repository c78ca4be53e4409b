"""Start the training pipeline on Vertex AI from its compiled file or published template: what
the scheduled monitoring pipeline does when the photos have drifted."""

from __future__ import annotations

from typing import Any

from google.cloud import aiplatform

from components.lib.targets.vertex import call_vertex, use_emulator_if_set


def start_training(
    template: str,
    project: str,
    location: str,
    pipeline_root: str,
    parameters: dict[str, Any],
    service_account: str = "",
    reason: str = "",
) -> str:
    """Submit a run of ``template`` (a ``gs://`` pipeline.yaml or an Artifact Registry
    template URI, ``https://REGION-kfp.pkg.dev/...``) with ``parameters``, labelled as started
    by drift; returns the job's resource name. It does not wait for the run."""
    use_emulator_if_set()
    job = aiplatform.PipelineJob(
        display_name="image-classifier-retrain-on-drift",
        template_path=template,
        pipeline_root=pipeline_root or None,
        parameter_values=parameters,
        project=project,
        location=location,
        labels={"started-by": "drift-monitor"},
        enable_caching=True,
    )
    call_vertex(
        f"start the training pipeline {template}" + (f" ({reason})" if reason else ""),
        lambda: job.submit(service_account=service_account or None),
    )
    return job.resource_name
