"""Batch prediction jobs (``google.cloud.aiplatform.v1.JobService``) that really score.

A job reads its JSONL instances from the GCS emulator, starts the model version's serving
container the way a deploy does (TF Serving's loader for the prebuilt TensorFlow images), sends
the instances in batches and writes what Vertex AI writes: under
``{gcs_destination}/prediction-{model}-{time}/``, ``prediction.results-00000-of-00001`` lines of
``{"instance", "prediction"}`` and ``prediction.errors_stats-00000-of-00001`` lines of
``{"instance", "error": {"status", "message"}}`` for the instances of a batch the model refused:
as Vertex AI does, a 4xx answer to a request fails every instance sent in it (one bad or
oversized instance costs its whole batch of ``batch_size``). The job goes
PENDING -> RUNNING -> SUCCEEDED (or FAILED with the reason, when the model cannot be served or
the input cannot be read), with ``completion_stats`` and ``output_info``.
"""

from __future__ import annotations

import datetime
import json
import threading
import time
from typing import Any

import grpc
from google.cloud import aiplatform_v1 as v1
from google.rpc import status_pb2

from tests.vertex_emulator.context import Context, now
from tests.vertex_emulator.registry import ModelRegistry
from tests.vertex_emulator.resources import ApiError, check_machine_spec, invalid, not_found
from tests.vertex_emulator.serving import ContainerRuntime, DeployError, ModelFiles, PredictError
from tests.vertex_emulator.storage import split_uri

DEFAULT_BATCH_SIZE = 64
_State = v1.JobState


class BatchPredictionJobs:
    """State and RPCs of the batch prediction part of ``JobService``."""

    def __init__(self, context: Context, registry: ModelRegistry, runtime: ContainerRuntime):
        self.context = context
        self.registry = registry
        self.runtime = runtime
        self.jobs: dict[str, v1.BatchPredictionJob] = {}
        self.delay_s = context.operations.delay_s

    def create_batch_prediction_job(
        self, request: v1.CreateBatchPredictionJobRequest
    ) -> v1.BatchPredictionJob:
        parent = self.context.names.parent(request.parent)
        job = v1.BatchPredictionJob(request.batch_prediction_job)
        version = self.registry.version(job.model)  # NOT_FOUND for an unknown model
        self._check(job)
        job.name = f"{parent}/batchPredictionJobs/{self.context.new_id()}"
        job.model_version_id = version.version_id
        job.state = _State.JOB_STATE_PENDING
        job.create_time = job.update_time = now()
        with self.context.lock:
            self.jobs[job.name] = job
        threading.Thread(
            target=self._run, args=(job.name, version), name="batch-prediction", daemon=True
        ).start()
        return v1.BatchPredictionJob(job)

    def get_batch_prediction_job(
        self, request: v1.GetBatchPredictionJobRequest
    ) -> v1.BatchPredictionJob:
        name = self.context.names.canonical(request.name)
        with self.context.lock:
            if name not in self.jobs:
                raise not_found(f"BatchPredictionJob {request.name}")
            return v1.BatchPredictionJob(self.jobs[name])

    @staticmethod
    def _check(job: v1.BatchPredictionJob) -> None:
        if not job.display_name:
            raise invalid("display_name is required.")
        if job.input_config.instances_format != "jsonl":
            raise invalid(
                f"The emulator reads jsonl instances, not {job.input_config.instances_format!r}."
            )
        if not job.input_config.gcs_source.uris:
            raise invalid("input_config.gcs_source.uris is required.")
        if job.output_config.predictions_format != "jsonl":
            raise invalid("The emulator writes jsonl predictions.")
        if not job.output_config.gcs_destination.output_uri_prefix.startswith("gs://"):
            raise invalid("output_config.gcs_destination.output_uri_prefix must be gs://.")
        if not job.dedicated_resources.machine_spec.machine_type:
            raise invalid("A custom-trained model's job needs dedicated_resources.machine_spec.")
        check_machine_spec(job.dedicated_resources.machine_spec, "dedicated_resources.machine_spec")

    def _update(self, name: str, **fields: Any) -> None:
        with self.context.lock:
            job = self.jobs[name]
            for key, value in fields.items():
                setattr(job, key, value)
            job.update_time = now()

    def _run(self, name: str, version: v1.Model) -> None:
        time.sleep(self.delay_s)
        self._update(name, state=_State.JOB_STATE_RUNNING, start_time=now())
        job = self.get_batch_prediction_job(v1.GetBatchPredictionJobRequest(name=name))
        files = None
        try:
            storage = self.context.storage
            if storage is None:
                raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, "no GCS emulator")
            files = ModelFiles(storage, version.artifact_uri, f"batch-{name.rsplit('/', 1)[-1]}")
            try:
                container = self.runtime.start(version.container_spec, files)
            except DeployError as error:
                raise ApiError(
                    grpc.StatusCode.FAILED_PRECONDITION, f"The model server failed: {error}"
                ) from None
            try:
                results, errors = self._score(container, job)
            finally:
                container.stop()
            directory = self._write(job, version, results, errors)
        except ApiError as error:
            self._update(
                name,
                state=_State.JOB_STATE_FAILED,
                error=status_pb2.Status(code=error.code.value[0], message=error.message),
                end_time=now(),
            )
            return
        finally:
            if files is not None:
                files.remove()
        self._update(
            name,
            state=_State.JOB_STATE_SUCCEEDED,
            output_info=v1.BatchPredictionJob.OutputInfo(gcs_output_directory=directory),
            completion_stats=v1.CompletionStats(
                successful_count=len(results), failed_count=len(errors)
            ),
            end_time=now(),
        )

    def _instances(self, job: v1.BatchPredictionJob) -> list[Any]:
        client = self.context.storage.client
        instances = []
        for uri in job.input_config.gcs_source.uris:
            bucket, path = split_uri(uri)
            blob = client.bucket(bucket).blob(path)
            if not blob.exists():
                raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, f"{uri} does not exist.")
            for number, line in enumerate(blob.download_as_text().splitlines(), start=1):
                if line.strip():
                    try:
                        instances.append(json.loads(line))
                    except json.JSONDecodeError:
                        raise ApiError(
                            grpc.StatusCode.INVALID_ARGUMENT, f"{uri} line {number} is not JSON."
                        ) from None
        return instances

    def _score(self, container: Any, job: v1.BatchPredictionJob) -> tuple[list, list]:
        instances = self._instances(job)
        size = job.manual_batch_tuning_parameters.batch_size or DEFAULT_BATCH_SIZE
        results, errors = [], []
        for start in range(0, len(instances), size):
            batch = instances[start : start + size]
            try:
                predictions = container.predict(batch, None)
                results += [
                    {"instance": i, "prediction": p}
                    for i, p in zip(batch, predictions, strict=True)
                ]
            except PredictError as error:
                errors += [
                    {"instance": instance, "error": {"status": 3, "message": str(error)}}
                    for instance in batch
                ]
            self._update(
                job.name,
                completion_stats=v1.CompletionStats(
                    successful_count=len(results), failed_count=len(errors)
                ),
            )
        return results, errors

    def _write(
        self, job: v1.BatchPredictionJob, version: v1.Model, results: list, errors: list
    ) -> str:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y_%m_%dT%H_%M_%S_%fZ")
        prefix = job.output_config.gcs_destination.output_uri_prefix.rstrip("/")
        directory = f"{prefix}/prediction-{version.display_name}-{stamp}"
        bucket_name, path = split_uri(directory)
        client = self.context.storage.client
        if client.lookup_bucket(bucket_name) is None:
            client.create_bucket(bucket_name)
        bucket = client.bucket(bucket_name)
        for kind, lines in (("results", results), ("errors_stats", errors)):
            bucket.blob(f"{path}/prediction.{kind}-00000-of-00001").upload_from_string(
                "".join(json.dumps(line) + "\n" for line in lines)
            )
        return directory
