"""``python -m pipeline.run schedule``: create, update in place, list, pause, resume, delete."""

from __future__ import annotations

import pytest
from google.cloud import aiplatform_v1 as v1

from pipeline.pipeline import PIPELINE_NAME
from pipeline.run import main
from tests.conftest import VERTEX_SETTINGS
from tests.vertex_emulator import VertexEmulator

SETTINGS = VERTEX_SETTINGS
pytestmark = pytest.mark.usefixtures("no_ambient_vertex_settings", "compiled_once")


def test_schedule_is_created_then_updated_not_duplicated(
    vertex_emulator: VertexEmulator, capsys: pytest.CaptureFixture
) -> None:
    account = "trainer@test-project.iam.gserviceaccount.com"
    vertex_emulator.iam.grant_act_as(account)
    assert main(["schedule", "--cron", "0 3 * * 1", "--max-concurrent", "2", *SETTINGS]) == 0
    assert "created schedule" in capsys.readouterr().out
    [created] = vertex_emulator.calls("CreateSchedule")
    assert created.schedule.display_name == PIPELINE_NAME
    assert created.schedule.cron == "0 3 * * 1"
    assert created.schedule.max_concurrent_run_count == 2
    job = created.schedule.create_pipeline_job_request.pipeline_job
    assert job.pipeline_spec["pipelineInfo"]["name"] == PIPELINE_NAME
    assert job.runtime_config.parameter_values["target"] == "vertex"
    assert job.runtime_config.gcs_output_directory == "gs://image-classifier-root/runs"

    argv = ["schedule", "--cron", "0 4 * * *", *SETTINGS, "--param", "epochs=5"]
    assert main([*argv, "--service-account", account]) == 0
    assert "updated schedule" in capsys.readouterr().out
    assert len(vertex_emulator.calls("CreateSchedule")) == 1
    [update] = vertex_emulator.calls("UpdateSchedule")
    assert update.schedule.name == next(iter(vertex_emulator.schedules))
    assert set(update.update_mask.paths) == {
        "cron",
        "max_concurrent_run_count",
        "create_pipeline_job_request",
    }
    [stored] = vertex_emulator.schedules.values()
    assert stored.cron == "0 4 * * *"
    assert stored.max_concurrent_run_count == 1
    updated_job = stored.create_pipeline_job_request.pipeline_job
    assert updated_job.runtime_config.parameter_values["epochs"] == 5
    assert updated_job.service_account == account


def test_list_pause_resume_delete(
    vertex_emulator: VertexEmulator, capsys: pytest.CaptureFixture
) -> None:
    assert main(["schedule", "--cron", "0 3 * * 1", *SETTINGS]) == 0
    [name] = vertex_emulator.schedules
    capsys.readouterr()

    assert main(["schedule", "list", *SETTINGS[:4]]) == 0, "list needs no pipeline root"
    listed = capsys.readouterr().out
    assert PIPELINE_NAME in listed and "ACTIVE" in listed and "0 3 * * 1" in listed

    assert main(["schedule", "pause", *SETTINGS]) == 0
    assert vertex_emulator.schedules[name].state == v1.Schedule.State.PAUSED
    assert main(["schedule", "resume", *SETTINGS]) == 0
    assert vertex_emulator.schedules[name].state == v1.Schedule.State.ACTIVE
    assert main(["schedule", "delete", *SETTINGS]) == 0
    assert vertex_emulator.schedules == {}
    assert f"deleted {name}" in capsys.readouterr().out

    assert main(["schedule", "pause", *SETTINGS]) == 1
    assert f"no schedule named '{PIPELINE_NAME}'" in capsys.readouterr().err


def test_schedule_without_cron_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    assert main(["schedule", *SETTINGS]) == 2
    assert "schedule needs --cron" in capsys.readouterr().err
