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
