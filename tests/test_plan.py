"""``python -m pipeline.run --plan``: each step, cached or run and why, from the runner's own
cache keys (kfp.local's cache folder, or Vertex ML Metadata through the emulator)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform

from pipeline.cache_keys import go_json, task_fingerprint
from pipeline.plan import CACHE_FINGERPRINT, CACHED, RUNS
from pipeline.run import main
from tests.conftest import (
    GCS_BUCKET,
    VERTEX_SETTINGS,
    gcs_emulator_client,
    make_layout,
    run_cli,
    upload_folder,
    write_image,
)

CACHEABLE = {
    "target",
    "tuning-plan",
    "hyperparameters",
    "download",
    "validate",
    "preprocess",
    "features",
    "train",
}
"""The steps of a run without tuning that may come from the cache."""
FROM_DOWNLOAD = ["download", "validate", "preprocess", "features", "train"]
QUICK = ["--param", "epochs=1", "--param", "fine_tune_epochs=0", "--param", "image_size=96"]


def by_step(plan: dict) -> dict[str, dict]:
    return {step["step"]: step for step in plan["steps"]}


def assert_runs_from(steps: dict[str, dict], first: str, reason: str) -> None:
    """``first`` and every step after it up to train run; the cacheable ones before it are
    cached."""
    running = FROM_DOWNLOAD[FROM_DOWNLOAD.index(first) :] if first in FROM_DOWNLOAD else []
    assert {name for name, s in steps.items() if s["status"] == CACHED} == CACHEABLE - set(running)
    if running:
        assert reason in steps[first]["reason"]
    for name in running[1:]:
        assert steps[name]["reason"].startswith("upstream step "), steps[name]


# The fingerprint function: Kubeflow Pipelines' backend algorithm


def test_go_json_writes_numbers_and_strings_as_go_does() -> None:
    assert go_json({"b": 5, "a": 5.0, "c": 1e-05, "d": 1e-07, "e": 0.25, "f": 1e21}) == (
        '{"a":5,"b":5,"c":0.00001,"d":1e-07,"e":0.25,"f":1e+21}'
    )
    assert go_json(["<a&b>", True, None]) == '["\\u003ca\\u0026b\\u003e",true,null]'


def test_fingerprint_follows_every_part_of_the_cache_key(spec: dict) -> None:
    from kfp import components

    pipeline = components.load_component_from_text(yaml.safe_dump(spec)).pipeline_spec
    component = pipeline.components["comp-validate-data"]
    executor = pipeline.deployment_spec["executors"]["exec-validate-data"]
    from kfp.local import utils

    container = utils.struct_to_executor_spec(executor).container
    parameters = {"min_image_size": 32, "max_unusable_share": 0.5}
    artifacts = {"raw_data": ["projects/1/locations/l/metadataStores/default/artifacts/7"]}
    key = task_fingerprint(parameters, artifacts, component, container)
    assert len(key) == 64 and key == task_fingerprint(parameters, artifacts, component, container)
    other_artifact = {"raw_data": ["projects/1/locations/l/metadataStores/default/artifacts/8"]}
    assert task_fingerprint(parameters, other_artifact, component, container) != key
    changed = {**parameters, "min_image_size": 33}
    assert task_fingerprint(changed, artifacts, component, container) != key
    container.image = "elsewhere/image-classifier:2"
    assert task_fingerprint(parameters, artifacts, component, container) != key


# Locally: kfp.local's cache under the state folder


def plan_local(state: Path, *args: str) -> dict:
    result = run_cli("--local", "--plan", "--json", "--state-dir", str(state), *QUICK, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.mark.e2e
def test_local_plan_follows_the_cache_the_data_and_the_parameters(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = by_step(plan_local(state))
    assert all(step["status"] == RUNS for step in first.values())
    assert first["download"]["reason"] == "no finished run with these inputs"
    assert first["upload"]["condition"] == "accuracy-gate"

    run = run_cli("--local", "--json", "--state-dir", str(state), *QUICK)
    assert run.returncode == 0, run.stderr[-3000:]

    unchanged = by_step(plan_local(state))
    assert_runs_from(unchanged, "none", "")
    for name in ("fingerprint", "evaluate", "upload", "deploy", "not-deployed"):
        assert unchanged[name]["status"] == RUNS
        assert unchanged[name]["reason"].startswith("never cached"), unchanged[name]

    epochs = by_step(plan_local(state, "--param", "epochs=2"))
    assert_runs_from(epochs, "train", "parameter changed: epochs 1 -> 2")

    table = run_cli("--local", "--plan", "--state-dir", str(state), *QUICK).stdout
    # One row per step, its columns padded to the longest step name.
    assert re.search(r"^train +come from the cache +same inputs as a finished run$", table, re.M)

    demo = state / "demo-data" / "train"
    write_image(demo / sorted(p.name for p in demo.iterdir())[0] / "added.jpg", (9, 99, 199))
    added = by_step(plan_local(state))
    assert_runs_from(added, "download", "the data fingerprint changed")
    assert added["fingerprint"]["reason"] != unchanged["fingerprint"]["reason"]

    assert all(s["status"] == RUNS for s in by_step(plan_local(state, "--no-cache")).values())


# On Vertex AI: the executions in Vertex ML Metadata (the emulator)


def plan_vertex(capsys: pytest.CaptureFixture, data_uri: str, *args: str) -> dict:
    assert main([*VERTEX_SETTINGS, "--plan", "--json", "--data-uri", data_uri, *args]) == 0
    return json.loads(capsys.readouterr().out)


def record_run(capsys: pytest.CaptureFixture, spec: dict, data_uri: str, *args: str) -> None:
    """What Vertex AI Pipelines records when it runs the job: the job, and for each task it
    runs an execution with the task's cache fingerprint, its output artifacts and its output
    parameters. A task's fingerprint is known once the tasks before it have theirs, so the
    run is recorded step by step, as the tasks finish."""
    assert main([*VERTEX_SETTINGS, "--data-uri", data_uri, *args]) == 0
    capsys.readouterr()
    while True:
        ready = [
            step
            for step in plan_vertex(capsys, data_uri, *args)["steps"]
            if step["status"] == RUNS and step["key"]
        ]
        if not ready:
            return
        for step in ready:
            outputs = spec["components"][step["component"]].get("outputDefinitions", {})
            execution = aiplatform.Execution.create(
                credentials=AnonymousCredentials(),
                schema_title="system.ContainerExecution",
                display_name=step["task"],
                state=aiplatform.gapic.Execution.State.COMPLETE,
                metadata={
                    CACHE_FINGERPRINT: step["key"],
                    **{
                        f"output:{name}": _recorded(step, name)
                        for name in outputs.get("parameters", {})
                    },
                },
            )
            execution.assign_output_artifacts(
                [
                    aiplatform.Artifact.create(
                        credentials=AnonymousCredentials(),
                        schema_title=output["artifactType"]["schemaTitle"],
                        display_name=name,
                        uri=f"gs://image-classifier-root/runs/{step['task']}/{name}",
                    )
                    for name, output in outputs.get("artifacts", {}).items()
                ]
            )


def _recorded(step: dict, name: str):
    """An output parameter as the step's run made it (the plan computes those it reads)."""
    return step.get("outputs", {}).get(name, "")


@pytest.mark.vertex_emulator
@pytest.mark.usefixtures("no_ambient_vertex_settings", "compiled_once")
def test_vertex_plan_reads_the_executions_in_metadata(
    vertex_emulator, emulated_gcs, gcs_emulator: str, capsys, spec: dict, tmp_path: Path
) -> None:
    client = gcs_emulator_client(gcs_emulator)
    layout = make_layout(tmp_path / "data")
    data_uri = upload_folder(client, layout, "plan-data")

    first = by_step(plan_vertex(capsys, data_uri))
    assert all(step["status"] == RUNS for step in first.values())

    record_run(capsys, spec, data_uri)
    unchanged = by_step(plan_vertex(capsys, data_uri))
    assert_runs_from(unchanged, "none", "")
    assert unchanged["train"]["reason"] == "same inputs as a finished run"

    epochs = by_step(plan_vertex(capsys, data_uri, "--param", "epochs=2"))
    assert_runs_from(epochs, "train", "parameter changed: epochs")

    write_image(layout / "train" / "0red" / "added.jpg", (9, 99, 199))
    client.bucket(GCS_BUCKET).blob("plan-data/train/0red/added.jpg").upload_from_filename(
        str(layout / "train" / "0red" / "added.jpg")
    )
    added = by_step(plan_vertex(capsys, data_uri))
    assert_runs_from(added, "download", "the data fingerprint changed")
