"""MetadataService: the Vertex ML Metadata calls of ``PipelineJob.submit(experiment=...)``.

The SDK makes sure the region's ``default`` metadata store exists, gets or creates the
experiment's context (schema ``system.Experiment``) and adds the pipeline run's context (made
with the job, ``pipeline_run_context``) to it as a child. ``ExperimentRun.create`` adds a
``system.ExperimentRun`` context the same way, and its ``log_params``/``log_metrics``/``end_run``
update that context's metadata (``_params``, ``_metrics``, ``_state``). Stores, contexts and their
children are kept, and so are artifacts, executions and the events between them, which Vertex AI
Pipelines records for each task it runs (``--plan`` reads the executions' cache fingerprints and
outputs back). Listing executions takes the filters ``--plan`` sends (AIP-160 conjunctions of
``schema_title``, ``state``, ``display_name`` and ``metadata.KEY.string_value`` equalities) and
``order_by="create_time desc"``; any other filter is refused, as the service refuses what it
cannot parse.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import grpc
from google.cloud import aiplatform_v1 as v1
from google.protobuf import json_format

from tests.vertex_emulator.context import Context, now
from tests.vertex_emulator.resources import ApiError, invalid, not_found


class Metadata:
    """State and RPCs of ``google.cloud.aiplatform.v1.MetadataService``."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.stores: dict[str, v1.MetadataStore] = {}
        self.contexts: dict[str, v1.Context] = {}
        self.children: dict[str, list[str]] = {}
        self.artifacts: dict[str, v1.Artifact] = {}
        self.executions: dict[str, v1.Execution] = {}
        self.events: dict[str, list[v1.Event]] = {}
        """execution name -> its events, in the order they were added."""

    def rpcs(self, rpc: Callable[..., Any]) -> list[Any]:
        service = "MetadataService"
        return [
            rpc(service, "GetMetadataStore", v1.GetMetadataStoreRequest, self.get_store),
            rpc(service, "CreateMetadataStore", v1.CreateMetadataStoreRequest, self.create_store),
            rpc(service, "GetContext", v1.GetContextRequest, self.get_context),
            rpc(service, "CreateContext", v1.CreateContextRequest, self.create_context),
            rpc(service, "ListContexts", v1.ListContextsRequest, self.list_contexts),
            rpc(service, "UpdateContext", v1.UpdateContextRequest, self.update_context),
            rpc(service, "AddContextChildren", v1.AddContextChildrenRequest, self.add_children),
            rpc(service, "GetArtifact", v1.GetArtifactRequest, self.get_artifact),
            rpc(service, "CreateArtifact", v1.CreateArtifactRequest, self.create_artifact),
            rpc(service, "CreateExecution", v1.CreateExecutionRequest, self.create_execution),
            rpc(service, "GetExecution", v1.GetExecutionRequest, self.get_execution),
            rpc(service, "ListExecutions", v1.ListExecutionsRequest, self.list_executions),
            rpc(service, "AddExecutionEvents", v1.AddExecutionEventsRequest, self.add_events),
            rpc(
                service,
                "QueryExecutionInputsAndOutputs",
                v1.QueryExecutionInputsAndOutputsRequest,
                self.query_inputs_and_outputs,
            ),
        ]

    def pipeline_run_context(self, parent: str, job_id: str, display_name: str) -> v1.Context:
        """The ``system.PipelineRun`` context that Vertex AI Pipelines makes for a job (in the
        region's default store, made too if it is missing)."""
        with self.context.lock:
            store = f"{parent}/metadataStores/default"
            if store not in self.stores:
                self.stores[store] = v1.MetadataStore(name=store, create_time=now())
            run = v1.Context(
                name=f"{store}/contexts/{job_id}",
                display_name=display_name,
                schema_title="system.PipelineRun",
                schema_version="0.0.1",
                create_time=now(),
                etag="1",
            )
            self.contexts[run.name] = run
            return v1.Context(run)

    def get_store(self, request: v1.GetMetadataStoreRequest) -> v1.MetadataStore:
        with self.context.lock:
            store = self.stores.get(self.context.names.canonical(request.name))
            if store is None:
                raise not_found(f"MetadataStore {request.name}")
            return v1.MetadataStore(store)

    def create_store(self, request: v1.CreateMetadataStoreRequest):
        parent = self.context.names.parent(request.parent)
        store = v1.MetadataStore(request.metadata_store)
        store.name = f"{parent}/metadataStores/{request.metadata_store_id or 'default'}"
        store.create_time = store.update_time = now()
        with self.context.lock:
            if store.name in self.stores:
                raise ApiError(grpc.StatusCode.ALREADY_EXISTS, f"{store.name} already exists.")

        def work() -> v1.MetadataStore:
            with self.context.lock:
                self.stores[store.name] = store
            return store

        return self.context.operations.start(
            "CreateMetadataStore", store.name, v1.CreateMetadataStoreOperationMetadata, work
        )

    def _store_of(self, parent: str) -> str:
        name = self.context.names.canonical(parent)
        if name not in self.stores:
            raise not_found(f"MetadataStore {parent}")
        return name

    def get_context(self, request: v1.GetContextRequest) -> v1.Context:
        with self.context.lock:
            found = self.contexts.get(self.context.names.canonical(request.name))
            if found is None:
                raise not_found(f"Context {request.name}")
            return v1.Context(found)

    def create_context(self, request: v1.CreateContextRequest) -> v1.Context:
        created = v1.Context(request.context)
        if not created.schema_title:
            raise invalid("Context.schema_title is required.")
        with self.context.lock:
            store = self._store_of(request.parent)
            created.name = f"{store}/contexts/{request.context_id or self.context.new_id()}"
            if created.name in self.contexts:
                raise ApiError(grpc.StatusCode.ALREADY_EXISTS, f"{created.name} already exists.")
            created.create_time = created.update_time = now()
            created.etag = "1"
            self.contexts[created.name] = created
            return v1.Context(created)

    def list_contexts(self, request: v1.ListContextsRequest) -> v1.ListContextsResponse:
        with self.context.lock:
            store = self._store_of(request.parent)
            found = [v1.Context(c) for n, c in self.contexts.items() if n.startswith(f"{store}/")]
        contexts, token = self.context.page(found, request)
        return v1.ListContextsResponse(contexts=contexts, next_page_token=token)

    def update_context(self, request: v1.UpdateContextRequest) -> v1.Context:
        with self.context.lock:
            name = self.context.names.canonical(request.context.name)
            stored = self.contexts.get(name)
            if stored is None:
                raise not_found(f"Context {request.context.name}")
            for path in request.update_mask.paths or ["display_name", "metadata", "description"]:
                setattr(stored, path, getattr(request.context, path))
            stored.update_time = now()
            return v1.Context(stored)

    def get_artifact(self, request: v1.GetArtifactRequest) -> v1.Artifact:
        with self.context.lock:
            self._store_of(request.name.split("/artifacts/", 1)[0])
            found = self.artifacts.get(self.context.names.canonical(request.name))
            if found is None:
                raise not_found(f"Artifact {request.name}")
            return v1.Artifact(found)

    def _create(self, kind: str, kept: dict, parent: str, resource: Any, resource_id: str) -> Any:
        if not resource.schema_title:
            raise invalid(f"{kind}.schema_title is required.")
        with self.context.lock:
            store = self._store_of(parent)
            resource.name = f"{store}/{kind.lower()}s/{resource_id or self.context.new_id()}"
            if resource.name in kept:
                raise ApiError(grpc.StatusCode.ALREADY_EXISTS, f"{resource.name} already exists.")
            resource.create_time = resource.update_time = now()
            resource.etag = "1"
            kept[resource.name] = resource
            return type(resource)(resource)

    def create_artifact(self, request: v1.CreateArtifactRequest) -> v1.Artifact:
        artifact = v1.Artifact(request.artifact)
        if not artifact.state:
            artifact.state = v1.Artifact.State.LIVE
        return self._create(
            "Artifact", self.artifacts, request.parent, artifact, request.artifact_id
        )

    def create_execution(self, request: v1.CreateExecutionRequest) -> v1.Execution:
        execution = v1.Execution(request.execution)
        created = self._create(
            "Execution", self.executions, request.parent, execution, request.execution_id
        )
        with self.context.lock:
            self.events[created.name] = []
        return created

    def _execution(self, name: str) -> v1.Execution:
        found = self.executions.get(self.context.names.canonical(name))
        if found is None:
            raise not_found(f"Execution {name}")
        return found

    def get_execution(self, request: v1.GetExecutionRequest) -> v1.Execution:
        with self.context.lock:
            return v1.Execution(self._execution(request.name))

    def list_executions(self, request: v1.ListExecutionsRequest) -> v1.ListExecutionsResponse:
        wanted = _execution_filter(request.filter)
        if request.order_by not in ("", "create_time desc", "create_time"):
            raise invalid(f"Unsupported order_by {request.order_by!r}.")
        with self.context.lock:
            store = self._store_of(request.parent)
            found = [
                v1.Execution(e)
                for name, e in self.executions.items()
                if name.startswith(f"{store}/") and wanted(e)
            ]
        # ids grow with time: the newest first when asked
        found.sort(key=lambda e: int(e.name.rsplit("/", 1)[1]), reverse="desc" in request.order_by)
        executions, token = self.context.page(found, request)
        return v1.ListExecutionsResponse(executions=executions, next_page_token=token)

    def add_events(self, request: v1.AddExecutionEventsRequest):
        with self.context.lock:
            execution = self._execution(request.execution)
            for event in request.events:
                if self.context.names.canonical(event.artifact) not in self.artifacts:
                    raise not_found(f"Artifact {event.artifact}")
                if event.type_ not in (v1.Event.Type.INPUT, v1.Event.Type.OUTPUT):
                    raise invalid("Event.type must be INPUT or OUTPUT.")
                kept = v1.Event(event)
                kept.artifact = self.context.names.canonical(event.artifact)
                kept.execution = execution.name
                kept.event_time = now()
                self.events[execution.name].append(kept)
        return v1.AddExecutionEventsResponse()

    def query_inputs_and_outputs(self, request: v1.QueryExecutionInputsAndOutputsRequest):
        with self.context.lock:
            execution = self._execution(request.execution)
            events = [v1.Event(e) for e in self.events[execution.name]]
            artifacts = {e.artifact: v1.Artifact(self.artifacts[e.artifact]) for e in events}
        return v1.LineageSubgraph(
            artifacts=list(artifacts.values()),
            executions=[v1.Execution(execution)],
            events=events,
        )

    def add_children(self, request: v1.AddContextChildrenRequest):
        with self.context.lock:
            name = self.context.names.canonical(request.context)
            if name not in self.contexts:
                raise not_found(f"Context {request.context}")
            children = self.children.setdefault(name, [])
            for child in request.child_contexts:
                if self.context.names.canonical(child) not in self.contexts:
                    raise not_found(f"Context {child}")
                children.append(self.context.names.canonical(child))
        return v1.AddContextChildrenResponse()


_CONDITION = re.compile(
    r'\s*(?P<field>[a-z_]+(?:\.[A-Za-z0-9_:-]+\.string_value)?)\s*=\s*"(?P<value>[^"]*)"\s*'
)


def _execution_filter(text: str) -> Callable[[v1.Execution], bool]:
    """A conjunction of equalities (``schema_title``, ``state``, ``display_name``,
    ``metadata.KEY.string_value``) as a predicate; anything else is INVALID_ARGUMENT."""
    wanted: list[tuple[str, str]] = []
    for part in re.split(r"\s+AND\s+", text.strip()) if text.strip() else []:
        match = _CONDITION.fullmatch(part)
        field = match["field"] if match else ""
        if not match or not (
            field in ("schema_title", "state", "display_name") or field.startswith("metadata.")
        ):
            raise invalid(f"Unsupported filter {text!r}.")
        wanted.append((field, match["value"]))

    def value(execution: v1.Execution, field: str) -> Any:
        if field == "state":
            return v1.Execution.State(execution.state).name
        if field.startswith("metadata."):
            metadata = json_format.MessageToDict(v1.Execution.pb(execution).metadata)
            found = metadata.get(field.split(".")[1])
            return found if isinstance(found, str) else None
        return getattr(execution, field)

    return lambda execution: all(value(execution, f) == v for f, v in wanted)
