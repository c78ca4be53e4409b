"""What a run would do, before it runs: each step, whether it runs or comes from the cache, and
why (``python -m pipeline.run --plan``).

The plan walks the compiled pipeline with kfp.local's own DAG orchestrator (its conditions,
``OneOf`` and sub-DAGs), with its task executor replaced by one that runs nothing: it builds
each task's arguments as kfp.local does, computes the task's cache key as the runner would
(``pipeline.cache_keys``) and looks it up in the runner's cache: kfp.local's cache folder under
the state folder, or Vertex ML Metadata's executions. A cached task hands its recorded outputs
to the tasks after it, exactly as in a run. A task that will run hands on outputs that do not
exist yet, so every task that reads them runs too; the cheap steps whose outputs decide what
the others do (``PREDICTED``: the data fingerprint, the target, the tuning plan) are computed
here with their own functions, so the plan sees a changed photo as the run will.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol
from unittest import mock

from kfp.dsl import executor as kfp_executor
from kfp.dsl.base_component import BaseComponent
from kfp.local import cache as local_cache
from kfp.local import io, status
from kfp.local.orchestrator import enhanced_dag_orchestrator, task_executor
from kfp.local.orchestrator.orchestrator_utils import OrchestratorUtils
from kfp.pipeline_spec import pipeline_spec_pb2

from components.fingerprint import fingerprint_data
from components.target import resolve_target
from components.tune import given_hyperparameters, plan_tuning
from pipeline.cache_keys import local_cache_key, task_fingerprint

CACHED = "cached"
RUNS = "runs"
PREDICTED: tuple[BaseComponent, ...] = (
    fingerprint_data,
    resolve_target,
    plan_tuning,
    given_hyperparameters,
)
"""Steps the plan computes itself, with the step's own function: cheap (listings and settings),
no side effects, and their outputs decide the cache keys and branches after them."""
FINGERPRINT_TASK = "fingerprint-data"
LAST_ARGUMENTS = os.path.join("plan", "last-run.json")
"""Under the state folder: the arguments of the last local run, to say which one changed."""
PIPELINE_ROOT_PLACEHOLDER = "{{$.pipeline_root}}"
CACHE_FINGERPRINT = "cache_fingerprint"
"""Metadata key of a Vertex ML Metadata execution that holds its task's cache fingerprint."""


class Unknown:
    """An output that exists only once ``step`` has run."""

    def __init__(self, step: str) -> None:
        self.step = step

    def __str__(self) -> str:
        return f"<output of {self.step}, once it runs>"


@dataclass
class PlannedStep:
    """One step of the plan: it ``runs`` or is ``cached``, and why."""

    step: str
    task: str
    component: str
    status: str
    reason: str
    condition: str = ""
    """The branch (``accuracy-gate``) the step is in, when what decides it is not known yet."""
    key: str = ""
    """The cache key looked up ("" when it is only known once an upstream step has run)."""
    outputs: dict[str, Any] = field(default_factory=dict, repr=False)
    """Parameter outputs known before the run: recorded in the cache, or computed here."""


@dataclass
class Plan:
    runner: str
    cache: str
    steps: list[PlannedStep]

    def to_json(self) -> dict[str, Any]:
        return {
            "runner": self.runner,
            "cache": self.cache,
            "steps": [asdict(step) for step in self.steps],
        }

    def table(self) -> str:
        """The plan as a table a person reads."""
        rows = [("STEP", "WILL", "WHY")]
        for step in self.steps:
            will = "come from the cache" if step.status == CACHED else "run"
            if step.condition:
                will += f" if {step.condition}"
            rows.append((step.step, will, step.reason))
        widths = [max(len(row[i]) for row in rows) for i in range(2)]
        lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in rows]
        return "\n".join([f"plan of a {self.runner} run (cache: {self.cache})", *lines])


@dataclass
class TaskCall:
    """What a runner knows of a task just before it runs it."""

    name: str
    spec: pipeline_spec_pb2.PipelineTaskSpec
    component_name: str
    component: pipeline_spec_pb2.ComponentSpec
    container: pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec
    arguments: dict[str, Any]


class CacheStore(Protocol):
    """A runner's cache, read only."""

    def key(self, call: TaskCall) -> str:
        """The task's cache key, as the runner computes it."""

    def lookup(self, key: str, call: TaskCall) -> dict[str, Any] | None:
        """The outputs recorded under ``key`` (artifacts as kfp artifacts), or None."""


class LocalStore:
    """kfp.local's cache folder (``<pipeline root>/.kfp_cache``, where ``run --local`` keeps it)."""

    def __init__(self, pipeline_root: str) -> None:
        self.root = os.path.join(pipeline_root, ".kfp_cache")
        self.cache = local_cache.LocalCache(self.root)

    def key(self, call: TaskCall) -> str:
        return local_cache_key(
            self.cache, call.component_name, call.container, call.spec, call.arguments
        )

    def lookup(self, key: str, call: TaskCall) -> dict[str, Any] | None:
        return self.cache.get(key)


def _predictors() -> dict[str, Callable[..., dict[str, Any]]]:
    """Component name in the compiled spec -> its outputs computed from its arguments."""

    def predictor(component: BaseComponent) -> Callable[..., dict[str, Any]]:
        names = list(component.component_spec.outputs or {})

        def outputs(**arguments: Any) -> dict[str, Any]:
            result = component.python_func(**arguments)
            return dict(zip(names, result, strict=True)) if len(names) > 1 else {names[0]: result}

        return outputs

    return {f"comp-{c.component_spec.name}": predictor(c) for c in PREDICTED}


class _Planner:
    """kfp.local's orchestrator, with a task executor that plans instead of running."""

    def __init__(
        self,
        store: CacheStore,
        placeholders: dict[str, str],
        pipeline_root: str,
        parameters: set[str],
        arguments: dict[str, Any],
        previous: dict[str, Any] | None,
        caching: bool,
    ) -> None:
        self.store = store
        self.placeholders = placeholders
        self.pipeline_root = pipeline_root
        self.parameters = parameters
        self.arguments = arguments
        self.previous = previous
        self.caching = caching
        self.predictors = _predictors()
        self.steps: list[PlannedStep] = []
        self.conditions: list[str] = []
        self.new_artifacts: dict[int, str] = {}
        """id of an output artifact that a planned run makes -> the step that makes it."""

    # kfp.local's seams
    def execute_single_task(
        self,
        task_name: str,
        task_spec: pipeline_spec_pb2.PipelineTaskSpec,
        components: dict[str, pipeline_spec_pb2.ComponentSpec],
        executors: dict[str, Any],
        io_store: io.IOStore,
        **_: Any,
    ) -> tuple[dict[str, Any], status.Status]:
        component_name = task_spec.component_ref.name
        component = components[component_name]
        call = TaskCall(
            name=task_name,
            spec=task_spec,
            component_name=component_name,
            component=component,
            container=executors[component.executor_label].container,
            arguments=OrchestratorUtils.make_task_arguments(
                task_inputs_spec=task_spec.inputs, io_store=io_store
            ),
        )
        step = PlannedStep(
            step=task_spec.task_info.name or task_name,
            task=task_name,
            component=component_name,
            status=RUNS,
            reason="",
            condition=" and ".join(self.conditions),
        )
        self.steps.append(step)
        upstream = self._upstream(call.arguments)
        if not task_spec.caching_options.enable_cache:
            step.reason = "never cached"
        elif not self.caching:
            step.reason = "caching is off (--no-cache)"
        elif upstream:
            step.reason = f"upstream step {upstream} runs"
        else:
            step.key = self.store.key(call)
            cached = self.store.lookup(step.key, call)
            if cached is not None:
                step.status, step.reason = CACHED, "same inputs as a finished run"
                step.outputs = {k: v for k, v in cached.items() if _is_parameter(v)}
                return cached, status.Status.SUCCESS
            step.reason = self._why_changed(call)
        outputs = self._new_outputs(call, step)
        step.outputs = {k: v for k, v in outputs.items() if _is_parameter(v)}
        if task_name == FINGERPRINT_TASK:
            step.reason += f" (data fingerprint now {outputs['Output'][:19]}...)"
        return outputs, status.Status.SUCCESS

    def execute_task(self, original: Callable[..., Any], **kwargs: Any) -> Any:
        """A condition's sub-DAG: its steps are marked with it while what decides it is unknown."""
        spec = kwargs["task_spec"]
        condition = spec.trigger_policy.condition
        undecided = bool(condition) and _undecided(condition, kwargs["io_store"])
        if undecided:
            self.conditions.append(spec.task_info.name or kwargs["task_name"])
        try:
            return original(**kwargs)
        finally:
            if undecided:
                self.conditions.pop()

    # reasons and outputs
    def _upstream(self, arguments: dict[str, Any]) -> str:
        """The step that runs before this one and makes one of its inputs, if any."""
        for value in _values(arguments):
            if isinstance(value, Unknown):
                return value.step
            if id(value) in self.new_artifacts:
                return self.new_artifacts[id(value)]
        return ""

    def _why_changed(self, call: TaskCall) -> str:
        """Why a task whose inputs are all known finds no cache entry."""
        changed = []
        for name, spec in call.spec.inputs.parameters.items():
            parameter = spec.component_input_parameter.removeprefix("pipelinechannel--")
            if (
                parameter in self.parameters
                and self.previous is not None
                and parameter in self.previous
                and self.previous[parameter] != call.arguments.get(name)
            ):
                changed.append(
                    f"{parameter} {self.previous[parameter]!r} -> {call.arguments.get(name)!r}"
                )
        if changed:
            return f"parameter changed: {', '.join(changed)}"
        producers = {
            spec.task_output_parameter.producer_task
            for spec in call.spec.inputs.parameters.values()
        }
        if FINGERPRINT_TASK in producers and self.previous is not None:
            return "the data fingerprint changed: no cached run read these images"
        return "no finished run with these inputs"

    def _new_outputs(self, call: TaskCall, step: PlannedStep) -> dict[str, Any]:
        """The outputs a run of the task will make: computed for the ``PREDICTED`` steps,
        otherwise new artifacts and values known only then."""
        outputs: dict[str, Any] = {}
        predictor = self.predictors.get(call.component_name)
        if predictor is not None:
            resolved = {k: _substituted(v, self.placeholders) for k, v in call.arguments.items()}
            outputs.update(predictor(**resolved))
        else:
            for name in call.component.output_definitions.parameters:
                outputs[name] = Unknown(step.step)
        for name, spec in call.component.output_definitions.artifacts.items():
            artifact = kfp_executor.create_artifact_instance(
                {
                    "name": "",
                    "uri": f"{self.pipeline_root}/<planned run>/{call.name}/{name}",
                    "metadata": {},
                    "type": {"schemaTitle": spec.artifact_type.schema_title},
                }
            )
            self.new_artifacts[id(artifact)] = step.step
            outputs[name] = artifact
        return outputs


def _same(value: Any) -> Any:
    return value


def _is_parameter(value: Any) -> bool:
    return isinstance(value, str | int | float | bool | list | dict) and not isinstance(
        value, Unknown
    )


def _values(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _values(item)
    elif isinstance(value, list):
        for item in value:
            yield from _values(item)
    else:
        yield value


_CHANNEL = re.compile(r"pipelinechannel--[a-zA-Z0-9_\-]+")
_CEL_INPUT = re.compile(r"inputs\.parameter_values\['([^']+)'\]")


def _undecided(condition: str, io_store: io.IOStore) -> bool:
    """Whether ``condition`` reads an output that exists only once its step has run."""
    evaluator = enhanced_dag_orchestrator.ConditionEvaluator
    channels = [*_CEL_INPUT.findall(condition), *_CHANNEL.findall(condition)]
    return any(
        isinstance(evaluator._resolve_pipeline_channel(channel, io_store), Unknown)
        for channel in channels
    )


@contextlib.contextmanager
def _planning(planner: _Planner) -> Iterator[None]:
    """kfp.local's orchestrator with ``planner`` in place of its task executor, and its
    conditions taken as true while what decides them is unknown (both branches are listed)."""
    evaluate = enhanced_dag_orchestrator.ConditionEvaluator.evaluate_condition
    run_task = enhanced_dag_orchestrator.execute_task

    def evaluate_condition(condition: str, io_store: io.IOStore) -> bool:
        return _undecided(condition, io_store) or evaluate(condition, io_store)

    dag_outputs = OrchestratorUtils.get_dag_outputs

    def get_dag_outputs(dag_outputs_spec: Any, io_store: io.IOStore) -> dict[str, Any]:
        try:
            return dag_outputs(dag_outputs_spec=dag_outputs_spec, io_store=io_store)
        except ValueError:  # a OneOf over branches that were all listed: decided at run time
            return {name: Unknown("a branch") for name in dag_outputs_spec.parameters}

    with (
        mock.patch.object(task_executor, "execute_single_task", planner.execute_single_task),
        mock.patch.object(OrchestratorUtils, "get_dag_outputs", staticmethod(get_dag_outputs)),
        mock.patch.object(
            enhanced_dag_orchestrator.ConditionEvaluator,
            "evaluate_condition",
            staticmethod(evaluate_condition),
        ),
        mock.patch.object(
            enhanced_dag_orchestrator,
            "execute_task",
            lambda **kwargs: planner.execute_task(run_task, **kwargs),
        ),
    ):
        yield


def plan_pipeline(
    pipeline_spec: pipeline_spec_pb2.PipelineSpec,
    arguments: dict[str, Any],
    store: CacheStore,
    pipeline_root: str,
    previous: dict[str, Any] | None = None,
    caching: bool = True,
    placeholders: dict[str, str] | None = None,
) -> list[PlannedStep]:
    """The steps a run of ``pipeline_spec`` with ``arguments`` would take, in order, each cached
    or not and why; ``previous`` (the last run's arguments, the pipeline's defaults for those
    not given) names the parameters that changed."""
    from google.protobuf import json_format
    from kfp.local import utils

    parameters = set(pipeline_spec.root.input_definitions.parameters)
    if previous is not None:  # a run's parameters not given took the pipeline's defaults
        integer = pipeline_spec_pb2.ParameterType.NUMBER_INTEGER
        defaults = {
            name: (int if spec.parameter_type == integer else _same)(
                json_format.MessageToDict(spec)["defaultValue"]
            )
            for name, spec in pipeline_spec.root.input_definitions.parameters.items()
            if spec.HasField("default_value")
        }
        previous = {**defaults, **previous}
    planner = _Planner(
        store,
        placeholders or {PIPELINE_ROOT_PLACEHOLDER: pipeline_root},
        pipeline_root,
        parameters,
        arguments,
        previous,
        caching,
    )
    executors = {
        name: utils.struct_to_executor_spec(executor)
        for name, executor in pipeline_spec.deployment_spec["executors"].items()
    }
    with _planning(planner):
        _, outcome = enhanced_dag_orchestrator.run_enhanced_dag(
            pipeline_resource_name=f"{pipeline_spec.pipeline_info.name}-plan",
            dag_component_spec=pipeline_spec.root,
            executors=executors,
            components=dict(pipeline_spec.components.items()),
            dag_arguments=arguments,
            pipeline_root=pipeline_root,
            runner=None,
            unique_pipeline_id="plan",
            fail_stack=[],
        )
    if outcome != status.Status.SUCCESS:
        raise RuntimeError("the pipeline could not be walked")
    return planner.steps


def remember_arguments(state_dir: str, arguments: dict[str, Any]) -> None:
    """Keep a local run's arguments, so that the next plan says which parameter changed; URIs
    with credentials are kept redacted, as everywhere a URI is written."""
    from components.lib.storage import redact_uri

    kept = {k: redact_uri(v) if isinstance(v, str) else v for k, v in arguments.items()}
    path = os.path.join(state_dir, LAST_ARGUMENTS)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(f"{path}.tmp", "w") as file:
        json.dump(kept, file)
    os.replace(f"{path}.tmp", path)


def _last_arguments(state_dir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(state_dir, LAST_ARGUMENTS)) as file:
            return json.load(file)
    except (OSError, ValueError):
        return None


def plan_local(
    pipeline_spec: pipeline_spec_pb2.PipelineSpec,
    arguments: dict[str, Any],
    pipeline_root: str,
    state_dir: str,
    caching: bool = True,
) -> Plan:
    """The plan of ``run --local`` against kfp.local's cache under the state folder."""
    store = LocalStore(pipeline_root)
    steps = plan_pipeline(
        pipeline_spec, arguments, store, pipeline_root, _last_arguments(state_dir), caching
    )
    return Plan(runner="local (kfp.local)", cache=store.root, steps=steps)


class VertexStore:
    """Vertex AI Pipelines' execution cache: the executions in Vertex ML Metadata, each with its
    task's fingerprint (``CACHE_FINGERPRINT``), its output artifacts (OUTPUT events, named by
    display name) and its output parameters (``output:NAME`` in its metadata)."""

    def __init__(self, project: str, location: str, placeholders: dict[str, str]) -> None:
        self.project = project
        self.location = location
        self.placeholders = placeholders

    def key(self, call: TaskCall) -> str:
        parameters: dict[str, Any] = {}
        artifacts: dict[str, list[str]] = {}
        for name, value in call.arguments.items():
            if isinstance(value, list) and value and all(map(_is_artifact, value)):
                artifacts[name] = [artifact.name for artifact in value]
            elif _is_artifact(value):
                artifacts[name] = [value.name]
            else:
                parameters[name] = _substituted(value, self.placeholders)
        return task_fingerprint(parameters, artifacts, call.component, call.container)

    def lookup(self, key: str, call: TaskCall) -> dict[str, Any] | None:
        from google.api_core import exceptions
        from google.cloud import aiplatform

        try:
            found = aiplatform.Execution.list(
                filter=f'metadata.{CACHE_FINGERPRINT}.string_value="{key}" AND state="COMPLETE"',
                order_by="create_time desc",
                project=self.project,
                location=self.location,
            )
        except exceptions.NotFound:  # no metadata store yet: no pipeline ever ran here
            return None
        if not found:
            return None
        execution = found[0]
        outputs: dict[str, Any] = {
            artifact.display_name: kfp_executor.create_artifact_instance(
                {
                    "name": artifact.resource_name,
                    "uri": artifact.uri,
                    "metadata": dict(artifact.metadata),
                    "type": {"schemaTitle": artifact.schema_title},
                }
            )
            for artifact in execution.get_output_artifacts()
        }
        for name in call.component.output_definitions.parameters:
            outputs[name] = execution.metadata.get(f"output:{name}")
        return outputs


def _is_artifact(value: Any) -> bool:
    from kfp import dsl

    return isinstance(value, dsl.Artifact)


def _substituted(value: Any, placeholders: dict[str, str]) -> Any:
    if isinstance(value, str):
        for placeholder, text in placeholders.items():
            value = value.replace(placeholder, text)
    return value


def _last_vertex_arguments(pipeline_name: str, project: str, location: str) -> dict | None:
    """The parameter values of the newest job of this pipeline, if any."""
    from google.cloud import aiplatform

    jobs = aiplatform.PipelineJob.list(
        filter=f'pipeline_name="{pipeline_name}"',
        order_by="create_time desc",
        project=project,
        location=location,
    )
    if not jobs:
        return None
    config = type(jobs[0].gca_resource.runtime_config).to_dict(jobs[0].gca_resource.runtime_config)
    return {
        name: int(value) if isinstance(value, float) and value.is_integer() else value
        for name, value in (config.get("parameter_values") or {}).items()
    }


def plan_vertex(
    pipeline_spec: pipeline_spec_pb2.PipelineSpec,
    arguments: dict[str, Any],
    project: str,
    location: str,
    pipeline_root: str,
    caching: bool = True,
) -> Plan:
    """The plan of a Vertex AI run against the executions in Vertex ML Metadata."""
    from google_cloud_pipeline_components import _placeholders

    placeholders = {
        PIPELINE_ROOT_PLACEHOLDER: pipeline_root,
        _placeholders.PROJECT_ID_PLACEHOLDER: project,
        _placeholders.LOCATION_PLACEHOLDER: location,
    }
    store = VertexStore(project, location, placeholders)
    previous = _last_vertex_arguments(pipeline_spec.pipeline_info.name, project, location)
    steps = plan_pipeline(
        pipeline_spec, arguments, store, pipeline_root, previous, caching, placeholders
    )
    store_name = f"projects/{project}/locations/{location}/metadataStores/default"
    return Plan(runner="Vertex AI Pipelines", cache=store_name, steps=steps)
