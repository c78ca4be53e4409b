"""JobService's custom training jobs: checked as Vertex AI checks them, recorded, not run.

A created job is PENDING, then SUCCEEDED when next read after the operation delay: enough for
the pipeline components' launcher to follow it. What is checked is what Vertex AI refuses at
creation: worker pools with a container image and machines whose GPUs attach to them, and
the caller's ``iam.serviceAccounts.actAs`` on the job's service account.
"""

from __future__ import annotations

import time

from google.cloud import aiplatform_v1 as v1
from google.protobuf import empty_pb2

from tests.vertex_emulator.context import Context, now
from tests.vertex_emulator.iam import Iam
from tests.vertex_emulator.resources import check_machine_spec, invalid, not_found

JobState = v1.JobState


def check_worker_pools(pools, where: str) -> None:
    """The worker pools of a custom job or a tuning job's trials, as Vertex AI refuses them."""
    if not pools:
        raise invalid(f"{where}.worker_pool_specs must not be empty.")
    for index, pool in enumerate(pools):
        if not pool.machine_spec.machine_type and index > 0:
            continue  # an empty pool keeps its place (e.g. no parameter servers)
        if not pool.container_spec.image_uri and not pool.python_package_spec.executor_image_uri:
            raise invalid(f"{where}.worker_pool_specs[{index}] must name a container image.")
        check_machine_spec(pool.machine_spec, f"{where}.worker_pool_specs[{index}].machine_spec")


class CustomJobs:
    """State and RPCs of JobService's custom jobs."""

    def __init__(self, context: Context, iam: Iam) -> None:
        self.context = context
        self.iam = iam
        self.jobs: dict[str, v1.CustomJob] = {}
        self._created: dict[str, float] = {}

    def create_custom_job(self, request: v1.CreateCustomJobRequest) -> v1.CustomJob:
        parent = self.context.names.parent(request.parent)
        job = v1.CustomJob(request.custom_job)
        if not job.display_name:
            raise invalid("CustomJob.display_name is required.")
        check_worker_pools(job.job_spec.worker_pool_specs, "job_spec")
        self.iam.require_act_as(job.job_spec.service_account)
        job.name = f"{parent}/customJobs/{self.context.new_id()}"
        job.state = JobState.JOB_STATE_PENDING
        job.create_time = job.update_time = now()
        with self.context.lock:
            self.jobs[job.name] = job
            self._created[job.name] = time.monotonic()
        return v1.CustomJob(job)

    def _job(self, name: str) -> v1.CustomJob:
        job = self.jobs.get(self.context.names.canonical(name))
        if job is None:
            raise not_found(f"CustomJob {name}")
        return job

    def get_custom_job(self, request: v1.GetCustomJobRequest) -> v1.CustomJob:
        with self.context.lock:
            job = self._job(request.name)
            ripe = time.monotonic() - self._created[job.name] >= self.context.operations.delay_s
            if job.state == JobState.JOB_STATE_PENDING and ripe:
                job.state, job.start_time = JobState.JOB_STATE_SUCCEEDED, now()
                job.end_time = job.update_time = now()
            return v1.CustomJob(job)

    def cancel_custom_job(self, request: v1.CancelCustomJobRequest) -> empty_pb2.Empty:
        with self.context.lock:
            job = self._job(request.name)
            if job.state in (JobState.JOB_STATE_PENDING, JobState.JOB_STATE_RUNNING):
                job.state = JobState.JOB_STATE_CANCELLED
        return empty_pb2.Empty()
