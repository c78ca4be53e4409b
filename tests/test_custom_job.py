"""The train step as a Vertex AI custom training job, and the image every step runs in."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.images import PLACEHOLDERS, ImageSet
from pipeline.compile import compile_pipeline, main
from pipeline.pipeline import TrainResources

IMAGE = "europe-west1-docker.pkg.dev/my-project/image-classifier/image-classifier:test"


def _step_images(images: ImageSet) -> set[str]:
    """The images the steps run in: infra validation runs in the serving one, the model's."""
    return {images.gpu, images.cpu, images.light, images.serving}


def _compiled(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _images(spec: dict) -> dict[str, str]:
    """The image of each step but the tuning job's (Google's launcher, whose trials run the
    project image: tests/test_tuning.py)."""
    return {
        name: e["container"]["image"]
        for name, e in spec["deploymentSpec"]["executors"].items()
        if name != "exec-hyperparameter-tuning-job"
    }


def _job_inputs(spec: dict) -> dict:
    """The train component's input parameters: the custom job's settings sit in their defaults."""
    return spec["components"]["comp-train-model"]["inputDefinitions"]["parameters"]


def test_custom_job_is_asked_for_by_replicas_machine_type_or_spot() -> None:
    assert not TrainResources().custom_job
    assert not TrainResources(accelerator_type="NVIDIA_L4", accelerator_count=2).custom_job
    assert TrainResources(replica_count=2).custom_job
    assert TrainResources(machine_type="n1-standard-8").custom_job
    assert TrainResources(spot=True).custom_job
    with pytest.raises(ValueError, match="replica_count"):
        TrainResources(replica_count=0)


def test_two_replicas_of_one_gpu_compile_to_worker_pools_in_the_given_image(
    tmp_path: Path,
) -> None:
    output = tmp_path / "job.yaml"
    main(
        [
            "--output", str(output),
            "--image", IMAGE,
            "--replicas", "2",
            "--machine-type", "n1-standard-8",
            "--accelerator-type", "NVIDIA_TESLA_T4",
            "--accelerator-count", "1",
            "--spot",
        ]
    )  # fmt: skip
    spec = _compiled(output)
    inputs = _job_inputs(spec)
    pools = inputs["worker_pool_specs"]["defaultValue"]
    assert [pool["replica_count"] for pool in pools] == [1, 1], "a chief and one worker"
    for pool in pools:
        assert pool["machine_spec"] == {
            "machine_type": "n1-standard-8",
            "accelerator_type": "NVIDIA_TESLA_T4",
            "accelerator_count": 1,
        }
        container = pool["container_spec"]
        assert container["image_uri"] == IMAGE
        assert "train_model" in container["args"], "the workers run the train component"
    assert inputs["strategy"]["defaultValue"] == "SPOT"
    assert inputs["restart_job_on_worker_restart"]["defaultValue"] is True
    assert inputs["service_account"]["defaultValue"] == "{{$.pipeline_service_account}}"
    assert inputs["display_name"]["defaultValue"] == "image-classifier-training-train"

    task = spec["root"]["dag"]["tasks"]["train-model"]
    assert "location" not in task["inputs"]["parameters"], "the job runs in the pipeline's region"
    assert inputs["location"]["defaultValue"] == "{{$.pipeline_google_cloud_location}}"
    assert task["taskInfo"]["name"] == "train"
    assert "resources" not in spec["deploymentSpec"]["executors"]["exec-train-model"]["container"]
    evaluate = spec["root"]["dag"]["tasks"]["evaluate-model"]["inputs"]["artifacts"]["model"]
    assert evaluate["taskOutputArtifact"] == {
        "outputArtifactKey": "model",
        "producerTask": "train-model",
    }

    images = _images(spec)
    assert images.pop("exec-train-model").startswith(
        "gcr.io/ml-pipeline/google-cloud-pipeline-components:"
    ), "the custom job task is Google's launcher"
    assert set(images.values()) == _step_images(ImageSet.beside(IMAGE))


def test_custom_job_without_machine_type_or_gpu(tmp_path: Path) -> None:
    output = compile_pipeline(
        str(tmp_path / "cpu.yaml"), TrainResources(accelerator_type="", replica_count=3)
    )
    inputs = _job_inputs(_compiled(Path(output)))
    pools = inputs["worker_pool_specs"]["defaultValue"]
    assert [pool["replica_count"] for pool in pools] == [1, 2]
    assert all(pool["machine_spec"] == {"machine_type": "n1-standard-8"} for pool in pools)
    assert all(pool["container_spec"]["image_uri"] == PLACEHOLDERS.gpu for pool in pools)
    assert inputs["strategy"]["defaultValue"] == "STANDARD"


def test_default_compile_is_a_plain_step_in_the_project_image(tmp_path: Path) -> None:
    spec = _compiled(Path(compile_pipeline(str(tmp_path / "pipeline.yaml"))))
    assert "worker_pool_specs" not in _job_inputs(spec)
    assert set(_images(spec).values()) == _step_images(PLACEHOLDERS)


def test_image_flag_sets_every_executor_image(tmp_path: Path) -> None:
    output = tmp_path / "pipeline.yaml"
    main(["--output", str(output), "--image", IMAGE])
    spec = _compiled(output)
    assert set(_images(spec).values()) == _step_images(ImageSet.beside(IMAGE))
    assert "worker_pool_specs" not in _job_inputs(spec)


@pytest.mark.parametrize(
    "flags",
    [["--replicas", "0"], ["--replicas", "2", "--cpu", "4"], ["--spot", "--memory", "16G"]],
)
def test_compile_cli_refuses_settings_that_cannot_apply(
    flags: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--output", str(tmp_path / "x.yaml"), *flags])
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "x.yaml").exists()


def test_a_vertex_tensorboard_makes_the_train_step_a_job_that_streams_its_logs(
    tmp_path: Path,
) -> None:
    tensorboard = "projects/my-project/locations/europe-west4/tensorboards/123"
    output = tmp_path / "job.yaml"
    main(["--output", str(output), "--image", IMAGE, "--tensorboard", tensorboard])

    inputs = _job_inputs(_compiled(output))
    assert inputs["tensorboard"]["defaultValue"] == tensorboard
    # Vertex AI sets AIP_TENSORBOARD_LOG_DIR to <base>/logs/: one folder per pipeline job.
    assert inputs["base_output_directory"]["defaultValue"] == (
        "{{$.pipeline_root}}/{{$.pipeline_job_uuid}}/train-job"
    )
    assert inputs["service_account"]["defaultValue"] == "{{$.pipeline_service_account}}"
    assert TrainResources(tensorboard=tensorboard).custom_job
    with pytest.raises(ValueError, match="projects/PROJECT/locations/REGION/tensorboards/ID"):
        TrainResources(tensorboard="my-tensorboard")
