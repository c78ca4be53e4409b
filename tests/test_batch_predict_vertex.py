"""Batch prediction on Vertex AI (``pipeline.predict --target vertex``) against the emulator: the
batch prediction job it creates, the instances it stages, the results it reads back."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from components.lib.targets import model_registry, vertex_batch
from pipeline import predict
from tests.conftest import VERTEX_LOCATION, VERTEX_PROJECT, write_image
from tests.serving_models import COLOURS
from tests.vertex_emulator import VertexEmulator

pytestmark = [pytest.mark.vertex_emulator, pytest.mark.slow]

IMAGE = "europe-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"
STAGING = "gs://beer-batch/runs"


def register(uri: str) -> str:
    registry = model_registry("vertex", "", VERTEX_PROJECT, VERTEX_LOCATION, IMAGE)
    return registry.upload_version("Beer Classifier", uri, {"accuracy": 0.9}, {}).resource_name


def staged_instances(emulated_gcs, request) -> list[dict]:
    [uri] = request.batch_prediction_job.input_config.gcs_source.uris
    bucket, _, path = uri.removeprefix("gs://").partition("/")
    text = emulated_gcs.bucket(bucket).blob(path).download_as_text()
    return [json.loads(line) for line in text.splitlines()]


def make_staging_bucket(client) -> None:
    name = STAGING.removeprefix("gs://").split("/")[0]
    if client.lookup_bucket(name) is None:
        client.create_bucket(name)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """One photo of each colour, a copy of the red one under another name, a corrupt JPEG."""
    folder = tmp_path / "photos"
    for name, colour in COLOURS.items():
        write_image(folder / f"{name}.jpg", colour, size=32)
    (folder / "copy-of-red.jpg").write_bytes((folder / "0red.jpg").read_bytes())
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return folder


def run(model: str, photos: Path, output: Path) -> int:
    return predict.main(
        [
            model,
            str(photos),
            "-o",
            str(output),
            "--target",
            "vertex",
            "--project",
            VERTEX_PROJECT,
            "--region",
            VERTEX_LOCATION,
            "--staging",
            STAGING,
            "--no-progress",
        ]
    )


def test_a_batch_prediction_job_scores_the_folder_and_resumes(
    vertex_emulator: VertexEmulator,
    stored: Callable[[str], str],
    emulated_gcs,
    photos: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.setattr(vertex_batch, "POLL_SECONDS", 0.05)
    version = register(stored("v1"))
    output = tmp_path / "predictions.jsonl"
    staging_bucket = emulated_gcs.lookup_bucket("beer-batch")
    if staging_bucket is not None:  # left by another test of this session's GCS emulator
        staging_bucket.delete(force=True)
    assert run("Beer Classifier@1", photos, output) == 1
    assert f"cannot write under --staging {STAGING}: does its bucket exist?" in (
        capsys.readouterr().err
    )
    make_staging_bucket(emulated_gcs)

    assert run("Beer Classifier@1", photos, output) == 0

    [request] = vertex_emulator.calls("CreateBatchPredictionJob")
    job = request.batch_prediction_job
    assert job.model == version  # the registered version, by its versioned name
    assert job.input_config.instances_format == "jsonl"
    assert job.output_config.gcs_destination.output_uri_prefix.startswith(f"{STAGING}/")
    assert job.dedicated_resources.machine_spec.machine_type == "n1-standard-2"
    sent = staged_instances(emulated_gcs, request)
    # The copy of the red photo is not sent twice, the corrupt one not at all: in a batch it
    # would fail every instance sent with it, as Vertex AI fails a batch on a 4xx.
    assert len(sent) == 3
    assert all(set(instance) == {"bytes"} for instance in sent)

    lines = {json.loads(line)["file"]: json.loads(line) for line in output.read_text().splitlines()}
    assert len(lines) == 5
    for name in COLOURS:
        line = lines[f"{photos}/{name}.jpg"]
        assert (line["class_name"], line["model_version"]) == (name, version)
        assert line["class_index"] == list(COLOURS).index(name)
        assert max(line["probabilities"]) == line["probabilities"][line["class_index"]]
    assert lines[f"{photos}/copy-of-red.jpg"]["class_name"] == "0red"
    assert "error" in lines[f"{photos}/corrupt.jpg"]
    assert "4 predicted, 0 already in" in capsys.readouterr().err

    # Again: only the corrupt file is tried again, and refused here: no job.
    assert run("Beer Classifier", photos, output) == 0
    assert len(vertex_emulator.calls("CreateBatchPredictionJob")) == 1
    assert "0 predicted, 4 already in" in capsys.readouterr().err
    assert len(output.read_text().splitlines()) == 5


def test_a_failed_job_is_one_message(
    vertex_emulator: VertexEmulator,
    stored: Callable[[str], str],
    emulated_gcs,
    photos: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.setattr(vertex_batch, "POLL_SECONDS", 0.05)
    make_staging_bucket(emulated_gcs)
    register(stored("broken"))
    assert run("Beer Classifier", photos, tmp_path / "p.jsonl") == 1
    err = capsys.readouterr().err
    assert "JOB_STATE_FAILED" in err and "The model server failed" in err
