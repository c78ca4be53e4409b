"""The monitoring pipeline: its steps, images and conditions as compiled; on Vertex AI (the
emulator) it is scheduled as the docs say, and its last step starts the training pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.images import ImageSet
from pipeline.monitoring_pipeline import PIPELINE_NAME, compile_monitoring_pipeline, main
from tests.conftest import ROOT, VERTEX_LOCATION, VERTEX_PROJECT

IMAGE = "europe-west4-docker.pkg.dev/test-project/beer/image-classifier:0.1.0"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("monitoring") / "monitoring.yaml"
    return Path(compile_monitoring_pipeline(str(path), ImageSet.beside(IMAGE)))


def _conditions(node: object) -> list[str]:
    """Every trigger condition in a compiled spec."""
    if isinstance(node, dict):
        found = [node["condition"]] if isinstance(node.get("condition"), str) else []
        return found + [c for value in node.values() for c in _conditions(value)]
    if isinstance(node, list):
        return [c for value in node for c in _conditions(value)]
    return []


def test_three_steps_in_their_images_under_their_conditions(compiled: Path) -> None:
    spec = yaml.safe_load(compiled.read_text())
    assert spec["pipelineInfo"]["name"] == PIPELINE_NAME
    executors = spec["deploymentSpec"]["executors"]
    images = {name: executor["container"]["image"] for name, executor in executors.items()}
    assert images == {
        "exec-check-drift": ImageSet.beside(IMAGE).cpu,
        "exec-review-canary": ImageSet.beside(IMAGE).cpu,
        "exec-start-training": ImageSet.beside(IMAGE).light,
    }
    conditions = set(_conditions(spec))
    assert "inputs.parameter_values['pipelinechannel--check-drift-Output'] == true" in conditions
    assert "inputs.parameter_values['pipelinechannel--training_template'] != ''" in conditions
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert parameters["target"]["defaultValue"] == "vertex"
    assert parameters["alpha"]["defaultValue"] == 0.05


def test_compile_needs_the_images(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--output", str(tmp_path / "x.yaml")])
    assert exited.value.code == 2 and "no --image" in capsys.readouterr().err


@pytest.mark.vertex_emulator
def test_scheduled_on_vertex_and_starting_the_training_pipeline(
    vertex_emulator, compiled: Path
) -> None:
    from google.cloud import aiplatform

    from components.lib.targets.retrain import start_training

    job = aiplatform.PipelineJob(
        display_name="beer-monitoring",
        template_path=str(compiled),
        pipeline_root="gs://bucket/monitoring-root",
        parameter_values={"training_template": "gs://bucket/pipeline.yaml"},
    )
    job.create_schedule(cron="0 * * * *", display_name="beer-monitoring-hourly")
    [schedule] = vertex_emulator.pipelines.schedules.values()
    assert schedule.cron == "0 * * * *"
    request = schedule.create_pipeline_job_request.pipeline_job
    assert request.runtime_config.parameter_values["training_template"] == (
        "gs://bucket/pipeline.yaml"
    )

    name = start_training(
        str(ROOT / "pipeline.yaml"),
        VERTEX_PROJECT,
        VERTEX_LOCATION,
        "gs://bucket/root",
        {"epochs": 3},
        reason="test",
    )
    [created] = vertex_emulator.calls("CreatePipelineJob")
    assert name.endswith(f"/pipelineJobs/{created.pipeline_job_id}")
    assert dict(created.pipeline_job.labels)["started-by"] == "drift-monitor"
    assert created.pipeline_job.runtime_config.parameter_values["epochs"] == 3
    assert "train-model" in created.pipeline_job.pipeline_spec["root"]["dag"]["tasks"]
