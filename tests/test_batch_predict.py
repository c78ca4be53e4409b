"""Batch prediction (``python -m pipeline.predict``) with the local registry: what is scored,
what is written, how a run resumes, and how bad inputs are reported."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from components.lib.serving.batch import (
    BatchPredictionError,
    InstanceSource,
    predict_to_jsonl,
)
from components.lib.serving.prediction import ServingModel
from components.lib.targets.base import ModelVersion, split_reference
from components.lib.targets.local import ModelRegistry
from pipeline import predict
from tests.conftest import write_image
from tests.serving_models import COLOURS, colour_model

CLASSES = list(COLOURS)
MODEL = "beer-classifier"


def resolve_local(state_dir: str, reference: str) -> ModelVersion:
    return ModelRegistry(state_dir, "", "").resolve(reference)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SavedModel of the serving contract made in a second (``tests/serving_models.py``): it
    tells photos apart by colour, so each input's answer is known."""
    return colour_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def registry(tmp_path: Path, tiny_model_dir: Path) -> str:
    """A local registry with two versions of the model; version 1 is aliased ``champion``."""
    state = tmp_path / "state"
    models = ModelRegistry(str(state), "local-project", "europe-west1")
    for version, aliases in ((1, ["champion"]), (2, [])):
        copy = tmp_path / f"upload-{version}"
        shutil.copytree(tiny_model_dir, copy)
        models.upload_version(MODEL, str(copy), {"accuracy": 0.9}, {}, aliases=aliases)
    return str(state)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Six photos (one in a sub-folder), a corrupt JPEG, a text file and a hidden file."""
    folder = tmp_path / "images"
    for index in range(3):
        write_image(folder / f"red{index}.jpg", (200, 40, 40), size=40 + index)
        write_image(folder / f"blue{index}.png", (40, 40, 200), size=40 + index, fmt="PNG")
    (folder / "more").mkdir()
    (folder / "blue2.png").rename(folder / "more" / "blue2.png")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\0")
    return folder


def read_output(path: Path) -> dict[str, dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    by_file = {line["file"]: line for line in lines}
    assert len(by_file) == len(lines), "an input appears twice in the output"
    return by_file


def test_model_references() -> None:
    assert split_reference("beer-classifier") == ("beer-classifier", "default")
    assert split_reference("projects/p/locations/l/models/m@3") == (
        "projects/p/locations/l/models/m",
        "3",
    )
    with pytest.raises(ValueError, match="MODEL@VERSION"):
        split_reference("a@b@c")


def test_versions_resolve_by_number_alias_and_default(registry: str) -> None:
    assert resolve_local(registry, MODEL).version_id == "2"  # default: the newest
    assert resolve_local(registry, f"{MODEL}@champion").version_id == "1"
    named = resolve_local(
        registry, f"projects/local-project/locations/europe-west1/models/{MODEL}@2"
    )
    assert named.resource_name.endswith(f"/models/{MODEL}@2")
    assert named.artifact_uri.endswith("versions/2")
    with pytest.raises(KeyError, match=r"no version or alias 'gold' \(versions: 1@champion, "):
        resolve_local(registry, f"{MODEL}@gold")
    with pytest.raises(KeyError, match="no model 'other'"):
        resolve_local(registry, "other")


@pytest.mark.slow
def test_folder_scored_through_the_serving_path(
    registry: str, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / "out" / "predictions.jsonl"
    status = predict.main(
        [
            f"{MODEL}@champion",
            str(images),
            "-o",
            str(output),
            "--state-dir",
            registry,
            "--batch-size",
            "4",
        ]
    )
    assert status == 0
    lines = read_output(output)
    good = ["blue0.png", "blue1.png", "more/blue2.png", "red0.jpg", "red1.jpg", "red2.jpg"]
    assert sorted(lines) == sorted(
        f"{images}/{name}" for name in [*good, "corrupt.jpg", "notes.txt"]
    )
    version = resolve_local(registry, f"{MODEL}@champion")
    serving = ServingModel(version.artifact_uri)
    for name in good:
        line = lines[f"{images}/{name}"]
        expected = serving.predict([(images / name).read_bytes()])
        assert line["model_version"] == version.resource_name
        assert line["class_index"] == int(expected.classes[0])
        assert line["class_name"] == CLASSES[line["class_index"]]
        np.testing.assert_allclose(line["probabilities"], expected.probabilities[0], atol=1e-5)
    for bad in ("corrupt.jpg", "notes.txt"):
        assert lines[f"{images}/{bad}"]["error"] == "not a decodable JPEG/PNG/BMP/GIF image"
    err = capsys.readouterr().err
    assert "predict: 100%" in err and "8/8" in err  # the progress bar
    assert "6 predicted, 0 already in" in err and "2 bad of 8 inputs" in err
    assert f"bad: {images}/notes.txt: not a decodable" in err


class CountingScorer:
    """The serving model, recording how many images each call scored."""

    def __init__(self, model_dir: str) -> None:
        self.model = ServingModel(model_dir)
        self.class_names = self.model.class_names
        self.calls: list[int] = []

    def predict(self, images: list[bytes]):
        self.calls.append(len(images))
        return self.model.predict(images)


@pytest.mark.slow
def test_an_interrupted_run_resumes_from_its_output(
    registry: str, images: Path, tmp_path: Path
) -> None:
    version = resolve_local(registry, MODEL)
    output = tmp_path / "predictions.jsonl"
    scorer = CountingScorer(version.artifact_uri)
    source = InstanceSource(str(images))
    first = predict_to_jsonl(scorer, source, str(output), version.resource_name, progress=False)
    assert (first.scored, len(first.bad), first.already_done) == (6, 2, 0)
    complete = read_output(output)
    # As if killed while writing: three whole lines, then half of the fourth.
    predicted = [line for line in output.read_text().splitlines() if '"error"' not in line]
    output.write_text("\n".join(predicted[:3]) + "\n" + predicted[3][:25])

    scorer.calls.clear()
    second = predict_to_jsonl(scorer, source, str(output), version.resource_name, progress=False)
    assert (second.already_done, second.scored, len(second.bad)) == (3, 3, 2)
    # the three missing and the two bad ones in one batch, then the three without the bad two
    assert scorer.calls == [5, 3]
    assert read_output(output) == complete

    scorer.calls.clear()
    third = predict_to_jsonl(scorer, source, str(output), version.resource_name, progress=False)
    assert (third.already_done, third.scored) == (6, 0)
    assert scorer.calls == [2]  # only the bad ones are tried again


def test_output_of_another_version_is_refused(
    registry: str, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / "predictions.jsonl"
    output.write_text(
        json.dumps({"file": f"{images}/red0.jpg", "class_index": 0, "model_version": "m@9"}) + "\n"
    )
    status = predict.main([MODEL, str(images), "-o", str(output), "--state-dir", registry])
    assert status == 2
    assert "holds predictions of m@9, not of projects/local-project" in capsys.readouterr().err


def test_usage_errors_are_one_line(registry: str, tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "p.jsonl")
    assert predict.main([MODEL, str(tmp_path / "absent"), "-o", out, "--state-dir", registry]) == 2
    assert "absent does not exist" in capsys.readouterr().err
    assert predict.main(["nope", str(tmp_path), "-o", out, "--state-dir", registry]) == 2
    assert "no model 'nope' in the local registry" in capsys.readouterr().err
    assert predict.main([MODEL, str(tmp_path), "-o", out, "--target", "vertex"]) == 2
    assert "--target vertex needs --project" in capsys.readouterr().err


@pytest.mark.slow
def test_jsonl_instances_with_and_without_names(
    registry: str, images: Path, tmp_path: Path
) -> None:
    red = (images / "red0.jpg").read_bytes()
    instances = tmp_path / "instances.jsonl"
    rows = [
        {"file": "shop/red.jpg", "bytes": {"b64": base64.b64encode(red).decode()}},
        {"b64": base64.b64encode(red).decode()},
        {"bytes": {"b64": "not base64!"}},
        {"image": "wrong shape"},
    ]
    instances.write_text("\n".join(json.dumps(row) for row in rows) + "\n\n")
    output = tmp_path / "predictions.jsonl"
    assert (
        predict.main(
            [MODEL, str(instances), "-o", str(output), "--state-dir", registry, "--no-progress"]
        )
        == 0
    )
    lines = read_output(output)
    assert set(lines) == {"shop/red.jpg", f"{instances}#2", f"{instances}#3", f"{instances}#4"}
    assert lines["shop/red.jpg"]["probabilities"] == lines[f"{instances}#2"]["probabilities"]
    assert "not valid base64" in lines[f"{instances}#3"]["error"]
    assert 'must be {"bytes": {"b64"' in lines[f"{instances}#4"]["error"]


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BatchPredictionError, match="holds no files"):
        InstanceSource(str(tmp_path / "empty"))


@pytest.mark.usefixtures("no_ambient_vertex_settings")
def test_vertex_settings_come_from_the_config_file_as_pipeline_run_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    config = tmp_path / "vertex.yaml"
    config.write_text("project: from-config\nregion: europe-west4\n")
    out = str(tmp_path / "p.jsonl")
    command = [MODEL, str(tmp_path), "-o", out, "--target", "vertex", "--config", str(config)]
    # project and region found: what is missing next is where the job stages its files
    assert predict.main(command) == 2
    needs = f"needs --staging (or IMAGE_CLASSIFIER_PIPELINE_ROOT, or 'pipeline_root' in {config})"
    assert needs in capsys.readouterr().err
    monkeypatch.setenv("IMAGE_CLASSIFIER_CONFIG", str(config))
    assert predict.main(command[:-2]) == 2  # the same file, named by the environment
    assert "needs --staging" in capsys.readouterr().err
    config.write_text("project: from-config\nregion: europe-west4\nzone: a\n")
    assert predict.main(command) == 2
    assert "unknown keys ['zone']" in capsys.readouterr().err
