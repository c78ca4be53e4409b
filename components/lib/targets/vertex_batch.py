"""Batch prediction on Vertex AI: a batch prediction job of a registered model version.

The inputs not yet in the output are written as one JSONL file of instances
(``{"bytes": {"b64": ...}}``, the endpoint's format) under a ``gs://`` staging folder; the job
(``Model.batch_predict``) scores them with the version's own serving container and writes
``prediction.results-*`` files of ``{"instance", "prediction"}`` lines (``"error"`` instead of
``"prediction"`` for an instance the model refused). Vertex AI does not keep the input order, so
each result is matched to its input by the instance's content. The results are appended to the
local output in the same format as local batch prediction, so a run resumes the same way.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

from google.cloud import aiplatform

from components.lib.serving.batch import (
    InstanceSource,
    JsonlWriter,
    Summary,
    error_record,
    prediction_record,
    progress_bar,
    resume,
)
from components.lib.serving.contract import (
    CLASS_NAMES_FILE,
    OUTPUT_CLASSES,
    OUTPUT_PROBABILITIES,
    SERVING_INPUT,
)
from components.lib.serving.protocol import DEFAULT_LIMITS, BadRequestError, shrunk
from components.lib.storage import filesystem, is_gcs
from components.lib.targets.base import ModelVersion
from components.lib.targets.vertex import VertexError, call_vertex

POLL_SECONDS = 10.0
_RESULT_FILES = ("prediction.results-", "prediction.errors_stats-")


def _instance_hash(b64: str) -> str:
    return hashlib.sha256(b64.encode()).hexdigest()


def batch_predict_vertex(
    registered: ModelVersion,
    project: str,
    location: str,
    source: InstanceSource,
    output: str,
    staging: str,
    machine_type: str,
    max_replicas: int,
    progress: bool = True,
) -> Summary:
    """Score the inputs of ``source`` not yet in ``output`` with a batch prediction job of
    ``registered``; inputs, job outputs and logs stay under ``staging`` (``gs://``)."""
    if not is_gcs(staging):
        raise VertexError(f"--staging {staging!r} must be a gs:// folder: the job reads from there")
    model = call_vertex(
        f"get model {registered.resource_name}",
        lambda: aiplatform.Model(
            registered.model, version=registered.version_id, project=project, location=location
        ),
    )
    version = model.versioned_resource_name
    done = resume(output, version)
    pending = [key for key in source.keys if key not in done]
    summary = Summary(output, total=len(source.keys), already_done=len(source.keys) - len(pending))
    if not pending:
        return summary
    run = f"{staging.rstrip('/')}/{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S}"
    class_names = _class_names(model.uri or "")
    writer = JsonlWriter(summary)
    try:
        try:
            keys_by_hash, largest = _write_instances(
                source, pending, f"{run}/instances.jsonl", writer
            )
        except FileNotFoundError:
            raise VertexError(
                f"cannot write under --staging {staging}: does its bucket exist?"
            ) from None
        if not keys_by_hash:
            return summary
        job = call_vertex(
            f"create a batch prediction job of {version}",
            lambda: model.batch_predict(
                job_display_name=f"{model.display_name}-batch-{run.rsplit('/', 1)[-1]}",
                gcs_source=f"{run}/instances.jsonl",
                instances_format="jsonl",
                gcs_destination_prefix=f"{run}/output",
                predictions_format="jsonl",
                machine_type=machine_type,
                batch_size=batch_size(largest),
                starting_replica_count=1,
                max_replica_count=max_replicas,
                sync=False,
            ),
        )
        call_vertex(f"create the job of {version}", job.wait_for_resource_creation)
        _follow(job, summary, progress)
        for line in _result_lines(job.output_info.gcs_output_directory):
            writer.write(_records(line, keys_by_hash, class_names, version))
        writer.write(  # what is left was never answered
            error_record(key, "the batch prediction job returned no result for it")
            for keys in keys_by_hash.values()
            for key in keys
        )
    finally:
        writer.close()
    return summary


def _class_names(model_uri: str) -> list[str]:
    fs, path = filesystem(f"{model_uri.rstrip('/')}/{CLASS_NAMES_FILE}")
    with fs.open(path, "rt") as file:
        return json.load(file)


def batch_size(largest_instance: int) -> int:
    """Instances per request to the serving container: the SDK's 64, fewer when 64 of the
    largest instance would pass the server's body limit (a 4xx fails the whole batch)."""
    budget = int(DEFAULT_LIMITS.max_body_bytes * 0.9)  # the request's own JSON around them
    return max(1, min(SDK_BATCH_SIZE, budget // max(1, largest_instance + 2)))


SDK_BATCH_SIZE = 64
"""``Model.batch_predict``'s default instances per request."""


def _write_instances(
    source: InstanceSource, keys: list[str], uri: str, writer: JsonlWriter
) -> tuple[dict[str, list[str]], int]:
    """Write the instances of ``keys`` to ``uri`` (large photos ``shrunk``); unreadable inputs
    go to ``writer`` as errors. Returns the input keys by instance content (the same image may
    come from two files) and the largest instance line's length."""
    keys_by_hash: dict[str, list[str]] = {}
    largest = 0
    fs, path = filesystem(uri)
    with fs.open(path, "wt") as file:
        for item in source.read(keys):
            try:
                image = shrunk(item.image) if not item.error else b""
            except BadRequestError as error:
                item = dataclasses.replace(item, error=str(error))
            if item.error:
                writer.write([error_record(item.key, item.error)])
                continue
            b64 = base64.b64encode(image).decode()
            digest = _instance_hash(b64)
            if digest not in keys_by_hash:
                line = json.dumps({SERVING_INPUT: {"b64": b64}})
                largest = max(largest, len(line))
                file.write(line + "\n")
            keys_by_hash.setdefault(digest, []).append(item.key)
    return keys_by_hash, largest


def _follow(job: aiplatform.BatchPredictionJob, summary: Summary, progress: bool) -> None:
    """Wait for ``job``, advancing the progress bar with its completion counts."""
    with progress_bar(summary, "batch prediction job", progress) as bar:
        while True:
            state = call_vertex(f"get {job.resource_name}", lambda: job.state)
            stats = job.completion_stats
            if stats is not None:
                counted = summary.already_done + stats.successful_count + stats.failed_count
                bar.update(max(0, counted - bar.n))
            if state == aiplatform.gapic.JobState.JOB_STATE_SUCCEEDED:
                return
            if state in (
                aiplatform.gapic.JobState.JOB_STATE_FAILED,
                aiplatform.gapic.JobState.JOB_STATE_CANCELLED,
                aiplatform.gapic.JobState.JOB_STATE_EXPIRED,
            ):
                raise VertexError(
                    f"batch prediction job {job.resource_name} {state.name}: "
                    f"{job.error.message or 'no reason given'}"
                )
            time.sleep(POLL_SECONDS)


def _result_lines(directory: str) -> Iterator[dict[str, Any]]:
    fs, path = filesystem(directory)
    for found in sorted(fs.find(path)):
        if found.rsplit("/", 1)[-1].startswith(_RESULT_FILES):
            with fs.open(found, "rt") as file:
                yield from (json.loads(line) for line in file if line.strip())


def _records(
    line: dict[str, Any], keys_by_hash: dict[str, list[str]], class_names: list[str], version: str
) -> list[dict[str, Any]]:
    """The output lines of every input whose instance ``line`` answers; they leave
    ``keys_by_hash``."""
    instance = line.get("instance") or {}
    keys = keys_by_hash.pop(_instance_hash(instance.get(SERVING_INPUT, {}).get("b64", "")), [])
    prediction = line.get("prediction")
    if isinstance(prediction, dict) and OUTPUT_CLASSES in prediction:
        return [
            prediction_record(
                key,
                prediction[OUTPUT_CLASSES],
                prediction[OUTPUT_PROBABILITIES],
                class_names,
                version,
            )
            for key in keys
        ]
    error = line.get("error") or {}
    reason = error.get("message", str(error)) if isinstance(error, dict) else str(error)
    return [error_record(key, reason or "no prediction") for key in keys]
