"""Runs recorded in an experiment: Vertex AI Experiments over the emulator's MetadataService, and
the local target's JSON files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.cloud import aiplatform

from components.lib.targets import experiments
from pipeline.run_summary import run_metrics, run_params
from tests.conftest import VERTEX_LOCATION, VERTEX_PROJECT
from tests.vertex_emulator import VertexEmulator

PARAMS = {"backbone": "efficientnet-lite0", "learning_rate": 0.01, "epochs": 10}
METRICS = {"accuracy": 0.9897, "eval_images": 97.0, "deployed": 1.0}


def test_params_and_metrics_of_a_run_summary() -> None:
    assert run_params({"epochs": 10, "allow_class_change": False, "data_uri": "gs://b/d"}) == {
        "allow_class_change": "false",
        "data_uri": "gs://b/d",
        "epochs": 10,
    }
    summary = {
        "accuracy": 0.9,
        "accuracy_ci95": [0.8, 0.95],
        "eval_images": 10,
        "champion_accuracy": None,
        "ece_before": 0.1,
        "ece_after": 0.05,
        "temperature": 1.5,
        "deployed": True,
        "serving": {"latency_p95_ms": 52.5, "model_mb": 18.5, "load_seconds": 9.2, "photos": 6},
    }
    assert run_metrics(summary) == {
        "accuracy": 0.9,
        "accuracy_ci95_low": 0.8,
        "accuracy_ci95_high": 0.95,
        "eval_images": 10.0,
        "ece_before": 0.1,
        "ece_after": 0.05,
        "temperature": 1.5,
        "deployed": 1.0,
        "latency_p95_ms": 52.5,
        "model_mb": 18.5,
        "load_seconds": 9.2,
    }


def test_the_local_target_keeps_each_run_as_a_json_file(tmp_path: Path) -> None:
    tracker = experiments("local", str(tmp_path), "local-project", "europe-west1")
    path = tracker.record_run("beer-trials", "run-1", PARAMS, METRICS)
    assert path == str(tmp_path / "experiments" / "beer-trials" / "run-1.json")
    record = json.loads(Path(path).read_text())
    assert (record["params"], record["metrics"]) == (PARAMS, METRICS)
    with pytest.raises(FileExistsError, match="has a run 'run-1' already"):
        tracker.record_run("beer-trials", "run-1", PARAMS, METRICS)


@pytest.mark.vertex_emulator
def test_a_run_is_recorded_in_vertex_ai_experiments(vertex_emulator: VertexEmulator) -> None:
    tracker = experiments("vertex", "", VERTEX_PROJECT, VERTEX_LOCATION)

    name = tracker.record_run("beer-trials", "run-1", PARAMS, METRICS)

    metadata = vertex_emulator.metadata
    store = f"projects/{vertex_emulator.project_number(VERTEX_PROJECT)}/locations/"
    store += f"{VERTEX_LOCATION}/metadataStores/default"
    assert name == f"{store}/contexts/beer-trials-run-1"
    created = {c.context.schema_title: c for c in vertex_emulator.calls("CreateContext")}
    assert created["system.Experiment"].context_id == "beer-trials"
    assert created["system.ExperimentRun"].context.display_name == "run-1"
    [added] = vertex_emulator.calls("AddContextChildren")
    assert added.context.endswith("/contexts/beer-trials") and added.child_contexts == [name]
    updates = [dict(u.context.metadata) for u in vertex_emulator.calls("UpdateContext")]
    assert any(dict(u.get("_params", {})) == PARAMS for u in updates)
    assert any(dict(u.get("_metrics", {})) == METRICS for u in updates)
    run = metadata.contexts[name]
    assert run.metadata["_state"] == "COMPLETE"
    assert metadata.children[f"{store}/contexts/beer-trials"] == [name]

    # Read back the SDK's way, as a notebook comparing runs does.
    read = aiplatform.ExperimentRun("run-1", experiment="beer-trials")
    assert read.get_params() == PARAMS
    assert read.get_metrics() == METRICS

    # A second run joins the same experiment.
    tracker.record_run("beer-trials", "run-2", PARAMS, {**METRICS, "accuracy": 0.97})
    assert len(metadata.children[f"{store}/contexts/beer-trials"]) == 2
    assert [c.context.schema_title for c in vertex_emulator.calls("CreateContext")].count(
        "system.Experiment"
    ) == 1
    assert vertex_emulator.unimplemented == []
