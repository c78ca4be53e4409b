"""``python -m pipeline.run`` without --local: what reaches Vertex AI Pipelines; clear errors."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.cloud import aiplatform_v1 as v1

from components.images import ImageSet
from pipeline.pipeline import PIPELINE_NAME
from pipeline.run import UsageError, main
from tests.conftest import (
    VERTEX_IMAGE,
    VERTEX_LOCATION,
    VERTEX_PROJECT,
    VERTEX_ROOT_URI,
    VERTEX_SETTINGS,
)
from tests.vertex_emulator import VertexEmulator

ROOT_URI = VERTEX_ROOT_URI
SETTINGS = VERTEX_SETTINGS
pytestmark = pytest.mark.usefixtures("no_ambient_vertex_settings", "compiled_once")


def test_submit_sends_spec_typed_parameters_root_account_and_labels(
    vertex_emulator: VertexEmulator, capsys: pytest.CaptureFixture
) -> None:
    vertex_emulator.iam.grant_act_as("trainer@test-project.iam.gserviceaccount.com")
    code = main(
        [
            *SETTINGS,
            "--service-account",
            "trainer@test-project.iam.gserviceaccount.com",
            "--network",
            "projects/1234/global/networks/ml",
            "--labels",
            "team=vision",
            "--labels",
            "cost-centre=r-and-d",
            "--param",
            "epochs=3",
            "--param",
            "learning_rate=0.005",
            "--data-uri",
            "gs://beers/data",
            "--no-cache",
        ]
    )
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0
    assert "default service account" not in captured.err

    [request] = vertex_emulator.calls("CreatePipelineJob")
    assert request.parent == f"projects/{VERTEX_PROJECT}/locations/{VERTEX_LOCATION}"
    job = request.pipeline_job
    assert job.pipeline_spec["pipelineInfo"]["name"] == PIPELINE_NAME
    assert "train-model" in job.pipeline_spec["root"]["dag"]["tasks"]
    values = job.runtime_config.parameter_values
    assert values["epochs"] == 3 and values["learning_rate"] == 0.005
    assert values["data_uri"] == "gs://beers/data"
    assert values["target"] == "vertex"
    assert (values["project"], values["location"]) == (VERTEX_PROJECT, VERTEX_LOCATION)
    # The model is served by the serving image pushed beside the steps' image: the compiled
    # default, as in a console or scheduled run of the same spec.
    assert "serving_image" not in values
    parameters = job.pipeline_spec["root"]["inputDefinitions"]["parameters"]
    assert parameters["serving_image"]["defaultValue"] == ImageSet.beside(VERTEX_IMAGE).serving
    assert job.runtime_config.gcs_output_directory == ROOT_URI
    assert job.service_account == "trainer@test-project.iam.gserviceaccount.com"
    assert job.network == "projects/1234/global/networks/ml"
    assert dict(job.labels)["team"] == "vision"
    assert dict(job.labels)["cost-centre"] == "r-and-d"
    tasks = job.pipeline_spec["root"]["dag"]["tasks"]
    assert dict(tasks["train-model"]["cachingOptions"]) == {"enableCache": False}
    job_id = request.pipeline_job_id
    assert job_id.startswith(PIPELINE_NAME)
    assert (
        f"https://console.cloud.google.com/vertex-ai/locations/{VERTEX_LOCATION}/pipelines/runs/"
        f"{job_id}?project={VERTEX_PROJECT}"
    ) in out


def test_settings_come_from_environment_and_config_file(
    vertex_emulator: VertexEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "vertex.yaml"
    config.write_text(
        f"region: {VERTEX_LOCATION}\npipeline_root: {ROOT_URI}\nlabels:\n  team: vision\n"
        f"image: {VERTEX_IMAGE}\n"
    )
    monkeypatch.setenv("IMAGE_CLASSIFIER_PROJECT", VERTEX_PROJECT)
    assert main(["--config", str(config)]) == 0
    job = vertex_emulator.calls("CreatePipelineJob")[0].pipeline_job
    assert job.runtime_config.gcs_output_directory == ROOT_URI
    assert dict(job.labels)["team"] == "vision"
    executors = job.pipeline_spec["deploymentSpec"]["executors"]
    images = {e["container"]["image"] for e in executors.values()}
    # Every step runs the given image or one beside it (infra validation the serving one), but
    # the tuning job's launcher, Google's own image.
    google = "gcr.io/ml-pipeline/google-cloud-pipeline-components:"
    beside = ImageSet.beside(VERTEX_IMAGE)
    assert {image for image in images if not image.startswith(google)} == {
        beside.gpu,
        beside.cpu,
        beside.light,
        beside.serving,
    }
    assert executors["exec-hyperparameter-tuning-job"]["container"]["image"].startswith(google)


@pytest.mark.parametrize(("final_state", "code"), [("SUCCEEDED", 0), ("FAILED", 1)])
def test_wait_follows_the_job_and_fails_with_it(
    vertex_emulator: VertexEmulator, capsys: pytest.CaptureFixture, final_state: str, code: int
) -> None:
    vertex_emulator.pipeline_final_state = v1.PipelineState[f"PIPELINE_STATE_{final_state}"]
    assert main([*SETTINGS, "--wait"]) == code
    assert vertex_emulator.calls("GetPipelineJob")
    captured = capsys.readouterr()
    assert "note: no --service-account: the job runs as the project's Compute Engine" in (
        captured.err
    )
    if code:
        assert "PIPELINE_STATE_FAILED" in captured.err and "out of memory" in captured.err
    else:
        assert "PIPELINE_STATE_SUCCEEDED" in captured.out


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("--project", "missing setting project (--project, IMAGE_CLASSIFIER_PROJECT or 'project'"),
        ("--region", "missing setting region (--region, IMAGE_CLASSIFIER_REGION"),
        ("--pipeline-root", "missing setting pipeline_root (--pipeline-root, IMAGE_CLASSIFIER_"),
    ],
)
def test_missing_required_setting_is_one_line_naming_it(
    capsys: pytest.CaptureFixture, missing: str, message: str
) -> None:
    index = SETTINGS.index(missing)
    assert main(SETTINGS[:index] + SETTINGS[index + 2 :]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "add --local" in err and "\n" not in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--param", "epoch=3"], "'epoch' is not a pipeline parameter"),
        (["--pipeline-root", "/tmp/root"], "must be a gs:// folder"),
        (["--labels", "Team=Vision"], "label Team='Vision'"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_sent(
    vertex_emulator: VertexEmulator, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    assert main([*SETTINGS, *extra]) == 2
    assert message in capsys.readouterr().err
    assert vertex_emulator.requests == []


def test_permission_denied_is_reported_clearly(
    vertex_emulator: VertexEmulator, capsys: pytest.CaptureFixture
) -> None:
    vertex_emulator.fail("CreatePipelineJob", grpc.StatusCode.PERMISSION_DENIED)
    assert main(SETTINGS) == 1
    err = capsys.readouterr().err
    assert "submit pipeline job to test-project/europe-west4: permission denied" in err
    assert "roles/aiplatform.user" in err


def test_unavailable_submission_is_retried(vertex_emulator: VertexEmulator) -> None:
    vertex_emulator.fail("CreatePipelineJob", grpc.StatusCode.UNAVAILABLE)
    assert main(SETTINGS) == 0
    assert len(vertex_emulator.calls("CreatePipelineJob")) == 2


def test_cli_without_settings_says_all_that_is_missing_in_one_line(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    assert main(["--config", str(tmp_path / "absent.yaml"), "--region", "mars-1"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: missing settings project (--project, IMAGE_CLASSIFIER_PROJECT")
    assert "pipeline_root (--pipeline-root" in line and "add --local" in line
    assert "image (--image, IMAGE_CLASSIFIER_IMAGE" in line
    assert "region 'mars-1' is not a Vertex AI region" in line


def test_flags_win_over_environment_which_wins_over_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from pipeline.run import _parser
    from pipeline.settings import vertex_settings

    config = tmp_path / "vertex.yaml"
    config.write_text(
        "project: from-config\nregion: us-central1\npipeline_root: gs://config\n"
        f"image: {VERTEX_IMAGE}\n"
    )
    monkeypatch.setenv("IMAGE_CLASSIFIER_CONFIG", str(config))
    monkeypatch.setenv("IMAGE_CLASSIFIER_REGION", "europe-west4")
    monkeypatch.setenv("IMAGE_CLASSIFIER_IMAGE", "eu.gcr.io/p/img:1")
    settings = vertex_settings(_parser().parse_args(["--project", "from-flag"]))
    assert (settings.project, settings.region, settings.pipeline_root, settings.image) == (
        "from-flag",
        "europe-west4",
        "gs://config",
        "eu.gcr.io/p/img:1",
    )
    config.write_text("projekt: typo\n")
    with pytest.raises(UsageError, match=r"unknown keys \['projekt'\]"):
        vertex_settings(_parser().parse_args([]))


def test_a_compiled_custom_job_pipeline_is_submitted_as_is(
    vertex_emulator: VertexEmulator, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from pipeline.compile import main as compile_main

    spec = tmp_path / "pipeline-2xT4.yaml"
    compile_main(["--output", str(spec), "--replicas", "2", "--image", "eu.gcr.io/p/img:9"])
    no_image = SETTINGS[: SETTINGS.index("--image")]
    assert main([*no_image, "--pipeline-file", str(spec), "--param", "epochs=4"]) == 0
    job = vertex_emulator.calls("CreatePipelineJob")[0].pipeline_job
    executors = job.pipeline_spec["deploymentSpec"]["executors"]
    assert executors["exec-train-model"]["container"]["image"].startswith(
        "gcr.io/ml-pipeline/google-cloud-pipeline-components"
    )
    assert executors["exec-download-data"]["container"]["image"] == "eu.gcr.io/p/img-light:9"
    assert job.runtime_config.parameter_values["epochs"] == 4

    assert main([*no_image, "--pipeline-file", str(tmp_path / "missing.yaml")]) == 2
    assert "--pipeline-file" in capsys.readouterr().err
    assert main([*SETTINGS, "--pipeline-file", str(spec)]) == 2
    assert "--image applies to a fresh compile" in capsys.readouterr().err
    compile_main(["--output", str(spec), "--placeholder-images"])
    assert main([*no_image, "--pipeline-file", str(spec)]) == 2
    assert "runs the placeholder image registry.invalid/" in (capsys.readouterr().err)
    assert len(vertex_emulator.calls("CreatePipelineJob")) == 1


@pytest.mark.parametrize("flags", [[], ["--enable-caching"]])
def test_caching_keeps_each_steps_own_setting_unless_turned_off(
    vertex_emulator: VertexEmulator, flags: list[str]
) -> None:
    assert main([*SETTINGS, *flags]) == 0
    job = vertex_emulator.calls("CreatePipelineJob")[0].pipeline_job
    tasks = job.pipeline_spec["root"]["dag"]["tasks"]
    assert dict(tasks["download-data"]["cachingOptions"]) == {"enableCache": True}
    for never_cached in ("fingerprint-data", "evaluate-model"):
        assert not dict(tasks[never_cached]["cachingOptions"]).get("enableCache")
