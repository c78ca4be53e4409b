"""The cache key of one pipeline task, as each runner computes it.

- kfp.local (``--local``): ``LocalCache.compute_key`` of kfp 2.17, called exactly as its task
  executor calls it (component name, image, command and args, the task's arguments with
  artifacts as their name, URI and metadata, environment, or the task's own cache key). A
  step's output artifact URI names the run that made it, so a step whose upstream step runs
  gets a new key.
- Vertex AI Pipelines: Kubeflow Pipelines' backend fingerprint (``backend/src/v2/cacheutils``:
  ``GenerateCacheKey`` then ``GenerateFingerPrint``): the sha256 of the JSON of a ``CacheKey``
  message holding the input parameter values, the input artifacts' names (their ML Metadata
  resource names), the output artifacts' types and the output parameters' types, the image
  and the command and args. That is the cache key that Vertex AI's documentation describes
  (inputs, output definitions, the component's image, command, args and environment).
"""

from __future__ import annotations

import decimal
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from kfp.local.cache import LocalCache
from kfp.pipeline_spec import pipeline_spec_pb2

Container = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec


def local_cache_key(
    cache: LocalCache,
    component_name: str,
    container: Container,
    task: pipeline_spec_pb2.PipelineTaskSpec,
    arguments: dict[str, Any],
) -> str:
    """kfp.local's key of a task (``kfp.local.orchestrator.task_executor``'s call)."""
    return cache.compute_key(
        component_name=component_name,
        image=container.image,
        full_command=[*container.command, *container.args],
        arguments=arguments,
        env_vars={env.name: env.value for env in container.env},
        custom_cache_key=task.caching_options.cache_key or None,
    )


def task_fingerprint(
    parameters: Mapping[str, Any],
    artifact_names: Mapping[str, list[str]],
    component: pipeline_spec_pb2.ComponentSpec,
    container: Container,
) -> str:
    """Kubeflow Pipelines' fingerprint of a task: ``parameters`` are its input parameter values
    (placeholders resolved), ``artifact_names`` the resource names of its input artifacts."""
    outputs = component.output_definitions
    key: dict[str, Any] = {
        "inputArtifactNames": {
            name: {"artifactNames": list(names)} for name, names in artifact_names.items()
        },
        "inputParameterValues": dict(parameters),
        "outputArtifactsSpec": {
            name: {
                "type": {
                    "schemaTitle": spec.artifact_type.schema_title,
                    "schemaVersion": spec.artifact_type.schema_version,
                }
            }
            for name, spec in outputs.artifacts.items()
        },
        "outputParametersSpec": {
            name: pipeline_spec_pb2.ParameterType.ParameterTypeEnum.Name(spec.parameter_type)
            for name, spec in outputs.parameters.items()
        },
        "containerSpec": {
            "image": container.image,
            "cmdArgs": [*container.command, *container.args],
            "env": [{"name": env.name, "value": env.value} for env in container.env],
        },
    }
    return hashlib.sha256(go_json(_proto3_json(key)).encode()).hexdigest()


def _proto3_json(value: Any) -> Any:
    """Drop what protojson leaves out: empty strings, lists and maps (proto3 defaults)."""
    if isinstance(value, dict):
        kept = {k: _proto3_json(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in ("", [], {}, None)}
    if isinstance(value, list):
        return [_proto3_json(v) for v in value]
    return value


def go_json(value: Any) -> str:
    """``value`` as Go's ``encoding/json`` writes what ``json.Unmarshal`` read: map keys sorted,
    no spaces, numbers as float64 (``5``, ``0.00001``, ``1e-07``), ``<``, ``>`` and ``&``
    escaped. The backend re-marshals protojson's output this way before hashing."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return _go_float(float(value))
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
            text = text.replace(char, escaped)
        return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    if isinstance(value, Mapping):
        items = (f"{go_json(str(k))}:{go_json(v)}" for k, v in sorted(value.items()))
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(go_json(v) for v in value) + "]"
    raise TypeError(f"no JSON form for {type(value).__name__}")


def _go_float(number: float) -> str:
    """Go's float64 JSON form: the shortest digits, fixed notation from 1e-6 to below 1e21."""
    if not math.isfinite(number):
        raise ValueError(f"{number} has no JSON form")
    magnitude = abs(number)
    if magnitude == 0 or 1e-6 <= magnitude < 1e21:
        text = format(decimal.Decimal(repr(number)), "f")
        return text[:-2] if text.endswith(".0") else text
    mantissa, exponent = repr(number).split("e")
    return f"{mantissa}e{exponent[0]}{int(exponent[1:]):02d}"
