"""Submit the compiled pipeline to Vertex AI Pipelines and manage its schedules.

Plain functions over the aiplatform SDK, called by ``python -m pipeline.run``; every API call
goes through ``call_vertex`` (bounded retries, clear permission errors).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from google.cloud import aiplatform, aiplatform_v1
from google.protobuf import field_mask_pb2

from components.lib.targets.vertex import VertexError, call_vertex


@dataclass(frozen=True)
class VertexSettings:
    """Where and as whom a pipeline job runs."""

    project: str
    region: str
    pipeline_root: str | None
    service_account: str | None = None
    network: str | None = None
    experiment: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


def console_url(settings: VertexSettings, job_id: str) -> str:
    return (
        f"https://console.cloud.google.com/vertex-ai/locations/{settings.region}/pipelines/runs/"
        f"{job_id}?project={settings.project}"
    )


def _job(
    settings: VertexSettings,
    spec_path: str,
    display_name: str,
    parameter_values: dict[str, Any],
    enable_caching: bool | None,
) -> aiplatform.PipelineJob:
    return aiplatform.PipelineJob(
        display_name=display_name,
        template_path=spec_path,
        pipeline_root=settings.pipeline_root,
        parameter_values=parameter_values,
        enable_caching=enable_caching,
        labels=settings.labels or None,
        project=settings.project,
        location=settings.region,
    )


def submit_pipeline(
    settings: VertexSettings,
    spec_path: str,
    display_name: str,
    parameter_values: dict[str, Any],
    enable_caching: bool | None,
) -> aiplatform.PipelineJob:
    """Create a pipeline job from the compiled spec; ``enable_caching`` None keeps the spec's."""
    job = _job(settings, spec_path, display_name, parameter_values, enable_caching)
    call_vertex(
        f"submit pipeline job to {settings.project}/{settings.region}",
        lambda: job.submit(
            service_account=settings.service_account,
            network=settings.network,
            experiment=settings.experiment,
        ),
    )
    return job


def wait_for(job: aiplatform.PipelineJob) -> None:
    """Follow ``job`` to its end; VertexError says why when it did not succeed."""
    try:
        job.wait()
    except RuntimeError as error:
        raise VertexError(f"pipeline job {job.resource_name} {job.state.name}: {error}") from None


def _schedules(settings: VertexSettings, display_name: str | None) -> list:
    return call_vertex(
        "list schedules",
        lambda: aiplatform.PipelineJobSchedule.list(
            filter=f'display_name="{display_name}"' if display_name else None,
            project=settings.project,
            location=settings.region,
        ),
    )


def upsert_schedule(
    settings: VertexSettings,
    spec_path: str,
    display_name: str,
    parameter_values: dict[str, Any],
    enable_caching: bool | None,
    cron: str,
    max_concurrent: int,
) -> tuple[str, bool]:
    """Create the schedule named ``display_name``, or update it if it exists.

    Updating replaces the cron, the concurrency and the job it starts (spec, parameters,
    service account, network, labels), so re-running the command is how a schedule is changed.
    Returns the schedule's resource name and whether it was created.
    """
    job = _job(settings, spec_path, display_name, parameter_values, enable_caching)
    existing = _schedules(settings, display_name)
    if not existing:
        schedule = aiplatform.PipelineJobSchedule(pipeline_job=job, display_name=display_name)
        call_vertex(
            f"create schedule {display_name!r}",
            lambda: schedule.create(
                cron=cron,
                max_concurrent_run_count=max_concurrent,
                service_account=settings.service_account,
                network=settings.network,
            ),
        )
        return schedule.resource_name, True
    if len(existing) > 1:
        raise VertexError(
            f"{len(existing)} schedules are named {display_name!r}; delete the extra ones "
            "(schedule list, schedule delete) so updates have one target"
        )
    updated = aiplatform_v1.Schedule(
        name=existing[0].resource_name,
        display_name=display_name,
        cron=cron,
        max_concurrent_run_count=max_concurrent,
        create_pipeline_job_request=aiplatform_v1.CreatePipelineJobRequest(
            parent=f"projects/{settings.project}/locations/{settings.region}",
            pipeline_job=aiplatform_v1.PipelineJob(
                pipeline_spec=job.pipeline_spec,
                runtime_config=job.runtime_config,
                labels=settings.labels,
                service_account=settings.service_account or "",
                network=settings.network or "",
            ),
        ),
    )
    mask = field_mask_pb2.FieldMask(
        paths=["cron", "max_concurrent_run_count", "create_pipeline_job_request"]
    )
    call_vertex(
        f"update schedule {display_name!r}",
        lambda: existing[0].api_client.update_schedule(schedule=updated, update_mask=mask),
    )
    return existing[0].resource_name, False


def list_schedules(settings: VertexSettings) -> list[dict[str, str]]:
    """Every pipeline schedule of the project and region: name, display name, state, cron."""
    return [
        {
            "name": s.resource_name,
            "display_name": s.display_name,
            "state": s.state.name,
            "cron": s.cron,
        }
        for s in _schedules(settings, None)
    ]


def change_schedule(settings: VertexSettings, display_name: str, action: str) -> str:
    """``pause``, ``resume`` or ``delete`` the schedule named ``display_name``."""
    found = _schedules(settings, display_name)
    if not found:
        raise VertexError(
            f"no schedule named {display_name!r} in {settings.project}/{settings.region}; "
            "`schedule list` shows the existing ones"
        )
    for schedule in found:
        call_vertex(f"{action} schedule {schedule.resource_name}", getattr(schedule, action))
    return ", ".join(s.resource_name for s in found)
