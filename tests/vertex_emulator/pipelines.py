"""PipelineService and ScheduleService: jobs are recorded, not run; schedules are kept.

A pipeline job is RUNNING when created and reaches ``final_state`` when it is next read (FAILED
carries an error message), enough for ``--wait`` to follow it.
"""

from __future__ import annotations

import re

import grpc
from google.cloud import aiplatform_v1 as v1
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from tests.vertex_emulator.context import Context, now
from tests.vertex_emulator.metadata import Metadata
from tests.vertex_emulator.resources import ApiError, display_name_filter, invalid, not_found

_PIPELINE_NAME = re.compile(r'\s*pipeline_name\s*=\s*"(?P<name>[^"]*)"\s*')
FAILED_JOB_MESSAGE = "The DAG failed because some tasks failed: step train: out of memory"


class Pipelines:
    """State and RPCs of ``PipelineService`` and ``ScheduleService``."""

    def __init__(self, context: Context, metadata: Metadata) -> None:
        self.context = context
        self.metadata = metadata
        self.jobs: dict[str, v1.PipelineJob] = {}
        self.final_state = v1.PipelineState.PIPELINE_STATE_SUCCEEDED
        self.schedules: dict[str, v1.Schedule] = {}

    # PipelineService
    def create_pipeline_job(self, request: v1.CreatePipelineJobRequest) -> v1.PipelineJob:
        parent = self.context.names.parent(request.parent)
        job = v1.PipelineJob(request.pipeline_job)
        job_id = request.pipeline_job_id or self.context.new_id()
        job.name = f"{parent}/pipelineJobs/{job_id}"
        with self.context.lock:
            if job.name in self.jobs:
                raise ApiError(grpc.StatusCode.ALREADY_EXISTS, f"PipelineJob {job.name} exists.")
        job.job_detail.pipeline_run_context = self.metadata.pipeline_run_context(
            parent, job_id, job.display_name
        )
        job.state = v1.PipelineState.PIPELINE_STATE_RUNNING
        job.create_time = job.start_time = now()
        with self.context.lock:
            self.jobs[job.name] = job
        return v1.PipelineJob(job)

    def get_pipeline_job(self, request: v1.GetPipelineJobRequest) -> v1.PipelineJob:
        with self.context.lock:
            job = self.jobs.get(self.context.names.canonical(request.name))
            if job is None:
                raise not_found(f"PipelineJob {request.name}")
            job.state = self.final_state
            if job.state == v1.PipelineState.PIPELINE_STATE_FAILED:
                job.error.message = FAILED_JOB_MESSAGE
            job.end_time = now()
            return v1.PipelineJob(job)

    def list_pipeline_jobs(self, request: v1.ListPipelineJobsRequest):
        """Takes ``pipeline_name="NAME"`` (the spec's pipelineInfo.name) as its filter and
        ``create_time desc`` as its order, as ``--plan`` asks; other filters are refused."""
        parent = self.context.names.parent(request.parent)
        match = _PIPELINE_NAME.fullmatch(request.filter) if request.filter else None
        if request.filter and not match:
            raise invalid(f"Unsupported filter {request.filter!r}.")
        if request.order_by not in ("", "create_time desc", "create_time"):
            raise invalid(f"Unsupported order_by {request.order_by!r}.")
        with self.context.lock:
            found = [
                v1.PipelineJob(j)
                for n, j in self.jobs.items()
                if n.startswith(parent) and (not match or _pipeline_name(j) == match["name"])
            ]
        if "desc" in request.order_by:
            found.reverse()  # kept in the order they were made
        jobs, token = self.context.page(found, request)
        return v1.ListPipelineJobsResponse(pipeline_jobs=jobs, next_page_token=token)

    # ScheduleService
    def create_schedule(self, request: v1.CreateScheduleRequest) -> v1.Schedule:
        parent = self.context.names.parent(request.parent)
        schedule = v1.Schedule(request.schedule)
        schedule.name = f"{parent}/schedules/{self.context.new_id()}"
        schedule.state = v1.Schedule.State.ACTIVE
        schedule.create_time = now()
        with self.context.lock:
            self.schedules[schedule.name] = schedule
        return v1.Schedule(schedule)

    def _schedule(self, name: str) -> v1.Schedule:
        schedule = self.schedules.get(self.context.names.canonical(name))
        if schedule is None:
            raise not_found(f"Schedule {name}")
        return schedule

    def get_schedule(self, request: v1.GetScheduleRequest) -> v1.Schedule:
        with self.context.lock:
            return v1.Schedule(self._schedule(request.name))

    def list_schedules(self, request: v1.ListSchedulesRequest) -> v1.ListSchedulesResponse:
        parent = self.context.names.parent(request.parent)
        wanted = display_name_filter(request.filter)
        with self.context.lock:
            found = [
                v1.Schedule(s)
                for name, s in self.schedules.items()
                if name.startswith(f"{parent}/") and wanted in (None, s.display_name)
            ]
        schedules, token = self.context.page(found, request)
        return v1.ListSchedulesResponse(schedules=schedules, next_page_token=token)

    def update_schedule(self, request: v1.UpdateScheduleRequest) -> v1.Schedule:
        """The fields of ``update_mask`` replaced; a field set now cannot be unset (the API's
        rule), down to the job request's service account, network or template URI."""
        with self.context.lock:
            stored = self._schedule(request.schedule.name)
            for path in request.update_mask.paths:
                old, new = (type(m).pb(m) for m in (stored, request.schedule))
                if unset := _unset_fields(old, new, path):
                    raise invalid(
                        f"UpdateSchedule cannot unset non-empty fields: {', '.join(unset)}."
                    )
            for path in request.update_mask.paths:
                setattr(stored, path, getattr(request.schedule, path))
            stored.update_time = now()
            return v1.Schedule(stored)

    def _set_state(self, name: str, state: v1.Schedule.State) -> empty_pb2.Empty:
        with self.context.lock:
            self._schedule(name).state = state
        return empty_pb2.Empty()

    def pause_schedule(self, request: v1.PauseScheduleRequest) -> empty_pb2.Empty:
        return self._set_state(request.name, v1.Schedule.State.PAUSED)

    def resume_schedule(self, request: v1.ResumeScheduleRequest) -> empty_pb2.Empty:
        return self._set_state(request.name, v1.Schedule.State.ACTIVE)

    def delete_schedule(self, request: v1.DeleteScheduleRequest):
        with self.context.lock:
            name = self._schedule(request.name).name

        def work() -> empty_pb2.Empty:
            with self.context.lock:
                self.schedules.pop(name, None)
            return empty_pb2.Empty()

        return self.context.operations.start(
            "DeleteSchedule", name, v1.DeleteOperationMetadata, work
        )


def _unset_fields(old: Message, new: Message, path: str) -> list[str]:
    """The fields under ``path`` (a field name) that ``old`` sets and ``new`` leaves empty;
    messages are compared field by field, lists and maps are replaced whole."""
    field = old.DESCRIPTOR.fields_by_name[path]
    if field.is_repeated:
        return []
    if field.message_type is None:
        was, now_ = getattr(old, path), getattr(new, path)
        return [path] if was and not now_ else []
    if not old.HasField(path):
        return []
    if not new.HasField(path):
        return [path]
    inner_old, inner_new = getattr(old, path), getattr(new, path)
    return [
        f"{path}.{name}"
        for described, _ in inner_old.ListFields()
        for name in _unset_fields(inner_old, inner_new, described.name)
    ]


def _pipeline_name(job: v1.PipelineJob) -> str:
    return job.pipeline_spec.get("pipelineInfo", {}).get("name", "")
