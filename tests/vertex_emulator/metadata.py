"""MetadataService: the Vertex ML Metadata calls of ``PipelineJob.submit(experiment=...)``.

The SDK makes sure the region's ``default`` metadata store exists, gets or creates the
experiment's context (schema ``system.Experiment``) and adds the pipeline run's context (made
with the job, ``pipeline_run_context``) to it as a child. ``ExperimentRun.create`` adds a
``system.ExperimentRun`` context the same way, and its ``log_params``/``log_metrics``/``end_run``
update that context's metadata (``_params``, ``_metrics``, ``_state``). Stores, contexts and their
children are kept; nothing else of ML Metadata is (``GetArtifact`` finds nothing).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.cloud import aiplatform_v1 as v1

from tests.vertex_emulator.context import Context, now
from tests.vertex_emulator.resources import ApiError, invalid, not_found


class Metadata:
    """State and RPCs of ``google.cloud.aiplatform.v1.MetadataService``."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.stores: dict[str, v1.MetadataStore] = {}
        self.contexts: dict[str, v1.Context] = {}
        self.children: dict[str, list[str]] = {}

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
        """No artifact is kept: the SDK's lookups (an experiment run's TensorBoard run) find
        none, as they find none in a store without them."""
        with self.context.lock:
            self._store_of(request.name.split("/artifacts/", 1)[0])
        raise not_found(f"Artifact {request.name}")

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
