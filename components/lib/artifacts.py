"""Helpers for KFP artifacts whose content lives in their metadata."""

from __future__ import annotations

import json
import os

from kfp import dsl


def write_metadata_file(artifact: dsl.Artifact) -> None:
    """Write the artifact's metadata as JSON at its path.

    Metrics artifacts keep their values in metadata and have no file; kfp.local's cache then
    finds the artifact "missing" and reruns the step every time. The file also gives a readable
    copy of the metrics in the pipeline root.
    """
    os.makedirs(os.path.dirname(artifact.path), exist_ok=True)
    with open(artifact.path, "w") as file:
        json.dump(artifact.metadata, file, indent=2, sort_keys=True)


class VertexModel(dsl.Artifact):
    """A registered model version; Vertex AI shows it as model lineage (``google.VertexModel``)."""

    schema_title = "google.VertexModel"
    schema_version = "0.0.1"


class VertexEndpoint(dsl.Artifact):
    """An endpoint; Vertex AI links it to its console page (``google.VertexEndpoint``)."""

    schema_title = "google.VertexEndpoint"
    schema_version = "0.0.1"


def describe_resource(artifact: dsl.Artifact, resource_name: str, api_uri: str | None) -> None:
    """Point ``artifact`` at a registry resource, as Google's own pipeline components do.

    On Vertex AI the URI is the resource's REST address (``api_uri``); locally the artifact stays
    a file in the pipeline root holding its metadata.
    """
    artifact.metadata["resourceName"] = resource_name
    if api_uri:
        artifact.uri = api_uri
    else:
        write_metadata_file(artifact)
