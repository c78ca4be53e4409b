"""Batch prediction, on the target's own path: here through the serving path, or with a Vertex
AI batch prediction job. Apart from the registries' seam (``components.lib.targets``) so that
the steps that register and deploy, which run in the light image, never reach the serving
path's TensorFlow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from components.lib.targets import needs_cloud
from components.lib.targets.base import ModelVersion

if TYPE_CHECKING:
    from components.lib.serving.batch import InstanceSource, Summary


@dataclass(frozen=True)
class BatchOptions:
    """How a batch of inputs is scored: ``batch_size`` images per call of the local model; on
    Vertex AI, a job on ``machine_type`` (at most ``max_replicas``) staged under ``staging``."""

    batch_size: int
    staging: str
    machine_type: str
    max_replicas: int
    progress: bool = True


def batch_predict(
    target: str,
    project: str,
    location: str,
    version: ModelVersion,
    source: InstanceSource,
    output: str,
    options: BatchOptions,
) -> Summary:
    """Score what ``source`` holds with ``version`` of ``target``'s registry into ``output``
    (JSONL): here through the serving path, or with a Vertex AI batch prediction job."""
    if needs_cloud(target):
        from components.lib.targets.vertex_batch import batch_predict_vertex

        return batch_predict_vertex(
            version,
            project,
            location,
            source,
            output,
            options.staging,
            machine_type=options.machine_type,
            max_replicas=options.max_replicas,
            progress=options.progress,
        )
    from components.lib.serving.batch import predict_to_jsonl
    from components.lib.serving.prediction import ServingModel

    return predict_to_jsonl(
        ServingModel(version.artifact_uri),
        source,
        output,
        version.resource_name,
        batch_size=options.batch_size,
        progress=options.progress,
    )
