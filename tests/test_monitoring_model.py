"""The model carries its reference and its embeddings: the export's monitoring signature, the
reference that training writes, and `python -m pipeline.monitor` on folders of photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from components.lib.monitoring.reference import load_reference, reference_of, write_reference
from pipeline.monitor import main

pytestmark = pytest.mark.slow  # TensorFlow models: seconds


def test_training_builds_a_reference_from_train_and_validation_photos(
    demo_data_dir: Path, tmp_path: Path
) -> None:
    """build_reference samples the train split's embeddings and scores the validation split."""
    import keras

    from components.lib.data.records import preprocess_dataset
    from components.lib.modelling.model import build_classifier
    from components.lib.modelling.reference import build_reference

    dataset = preprocess_dataset(
        str(demo_data_dir), str(tmp_path / "records"), image_size=32, validation_fraction=0.25
    )
    keras.utils.set_random_seed(1)
    classifier = build_classifier(len(dataset.class_names), 32, 0.2, weights=None)
    reference = build_reference(classifier, dataset, temperature=2.0, size=20)
    assert reference.embeddings.shape == (20, 1280)
    assert len(set(reference.labels.tolist())) == len(dataset.class_names)
    assert len(reference.confidences) == dataset.split_size("val")
    assert np.all((reference.confidences > 0) & (reference.confidences <= 1))


def test_the_monitoring_signature_answers_as_serving_default_with_embeddings(
    backbone_serving, monitored_model: Path, demo_data_dir: Path
) -> None:
    from components.lib.serving.prediction import ServingModel

    photos = [path.read_bytes() for path in sorted(demo_data_dir.glob("eval/*/*.jpg"))[:5]]
    plain = backbone_serving.predict(photos)
    monitored = ServingModel(str(monitored_model), with_embeddings=True).predict(photos)
    assert plain.embeddings is None and monitored.embeddings.shape == (5, 1280)
    np.testing.assert_allclose(monitored.probabilities, plain.probabilities, atol=1e-6)
    assert monitored.classes.tolist() == plain.classes.tolist()


def _shifted(source: Path, destination: Path) -> Path:
    """The photos blurred and in grey: the same objects, another camera."""
    for path in sorted(source.glob("*/*.jpg")):
        target = destination / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        image = Image.open(path).convert("L").filter(ImageFilter.GaussianBlur(4))
        image.convert("RGB").save(target)
    return destination


@pytest.fixture(scope="module")
def monitored_model(backbone_model_dir: Path, demo_data_dir: Path) -> Path:
    """The ImageNet backbone's export with a reference made from the demo's train photos."""
    from components.lib.serving.prediction import ServingModel

    model = ServingModel(str(backbone_model_dir), with_embeddings=True)
    photos = sorted(demo_data_dir.glob("train/*/*.jpg"))
    labels = np.array([sorted(p.parent.name for p in photos).index(p.parent.name) for p in photos])
    predicted = model.predict([path.read_bytes() for path in photos])
    write_reference(
        str(backbone_model_dir),
        reference_of(model.class_names, predicted.embeddings, labels, predicted.probabilities),
    )
    return backbone_model_dir


@pytest.fixture
def monitor(capsys: pytest.CaptureFixture):
    """``python -m pipeline.monitor ARGS`` in this process (TensorFlow is loaded already):
    (exit status, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        status = main(list(args))
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


def test_monitor_images_finds_no_drift_in_like_photos_and_drift_in_shifted_ones(
    monitored_model: Path, demo_data_dir: Path, tmp_path: Path, monitor
) -> None:
    status, out, err = monitor(
        "--model", str(monitored_model), "--images", str(demo_data_dir / "eval"),
        "--report-dir", str(tmp_path / "like"), "--json",
    )  # fmt: skip
    assert status == 0, err
    verdict = json.loads(out.strip().splitlines()[-1])
    assert verdict["drift"] is False and verdict["sample_size"] == 24
    assert verdict["reference_size"] == 64

    shifted = _shifted(demo_data_dir / "eval", tmp_path / "shifted")
    status, out, err = monitor(
        "--model", str(monitored_model), "--images", str(shifted),
        "--report-dir", str(tmp_path / "moved"), "--json",
    )  # fmt: skip
    assert status == 3, err
    verdict = json.loads(out.strip().splitlines()[-1])
    assert verdict["drift"] is True and verdict["tests"]["embeddings"]["p_value"] < 0.01
    report = (tmp_path / "moved" / "report.html").read_text()
    assert "Drift: the recent photos" in report and "data:image/png;base64," in report
    assert json.loads((tmp_path / "moved" / "verdict.json").read_text())["drift"] is True


def test_monitor_reads_the_request_samples_of_the_served_version(
    monitored_model: Path, demo_data_dir: Path, tmp_path: Path, monitor
) -> None:
    """What the server wrote under the state folder, against the endpoint's champion."""
    from components.lib.monitoring.sampler import RequestSampler, SamplingSettings
    from components.lib.serving.prediction import ServingModel
    from components.lib.targets.local import EndpointRegistry, ModelRegistry

    state = tmp_path / "state"
    version = ModelRegistry(str(state), "local-project", "europe-west1").upload_version(
        "beer-classifier", str(monitored_model), {}, {}
    )
    EndpointRegistry(str(state), "local-project", "europe-west1").deploy(
        "beer-classifier-endpoint", version
    )
    assert load_reference(version.artifact_uri).embeddings.shape == (64, 1280)
    model = ServingModel(version.artifact_uri, with_embeddings=True)
    sampler = RequestSampler(SamplingSettings(str(state / "monitoring" / "beer-classifier-v1")))
    images = [path.read_bytes() for path in sorted(demo_data_dir.glob("eval/*/*.jpg"))]
    predicted = model.predict(images)
    sampler.observe(predicted.embeddings, predicted.probabilities, images)
    sampler.flush()

    endpoint = ("--endpoint", "beer-classifier-endpoint")
    status, out, err = monitor(
        *endpoint, "--state-dir", str(state), "--report-dir", str(tmp_path / "r"), "--json"
    )
    assert status == 0, err
    assert json.loads(out.strip().splitlines()[-1])["sample_size"] == 24
    status, _, err = monitor(
        *endpoint, "--state-dir", str(tmp_path / "none"), "--report-dir", str(tmp_path / "e")
    )
    assert status == 2 and err.startswith("error: no local endpoint") and err.count("\n") == 1
