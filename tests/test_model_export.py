"""The exported SavedModel: Vertex/TF Serving contract and no training/serving skew."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components.lib.serving.prediction import InvalidImageError, ServingModel


@pytest.fixture(scope="module")
def serving(demo_model_dir: Path) -> ServingModel:
    return ServingModel(str(demo_model_dir))


def test_signature_contract(demo_model_dir: Path) -> None:
    signature = tf.saved_model.load(str(demo_model_dir)).signatures["serving_default"]
    inputs = signature.structured_input_signature[1]
    assert list(inputs) == ["bytes"]
    assert inputs["bytes"].dtype == tf.string and inputs["bytes"].shape.as_list() == [None]
    outputs = signature.structured_outputs
    assert set(outputs) == {"CLASSES", "PROBABILITIES"}
    assert outputs["CLASSES"].dtype == tf.int64
    assert outputs["PROBABILITIES"].dtype == tf.float32
    assert outputs["PROBABILITIES"].shape.as_list() == [None, 4]


def test_jpeg_and_png_of_any_size_are_classified(
    serving: ServingModel, demo_data_dir: Path
) -> None:
    photo = Image.open(demo_data_dir / "eval/2coffee/000.jpg")
    png = io.BytesIO()
    photo.resize((300, 200)).save(png, format="PNG")
    jpeg = (demo_data_dir / "eval/2coffee/000.jpg").read_bytes()

    predictions = serving.predict([jpeg, png.getvalue()])

    assert predictions.classes.tolist() == [2, 2]
    assert predictions.probabilities.shape == (2, 4)
    np.testing.assert_allclose(predictions.probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert serving.class_names[2] == "2coffee"


def test_training_pixels_and_served_bytes_give_the_same_prediction(
    serving: ServingModel, demo_data_dir: Path, tmp_path: Path
) -> None:
    """A photo's TFRecord pixels (what training saw), sent back losslessly as a PNG of the model's
    input size, score the same as the original JPEG: one decode-and-resize serves both paths."""
    from components.lib.data.records import preprocess_dataset, read_split

    dataset = preprocess_dataset(str(demo_data_dir), str(tmp_path / "records"), image_size=96)
    images, labels = next(iter(read_split(dataset, "eval", batch_size=64)))
    image, label = images[0].numpy(), int(labels[0])
    candidates = sorted((demo_data_dir / "eval" / dataset.class_names[label]).glob("*.jpg"))
    originals = [path.read_bytes() for path in candidates]
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")

    predictions = serving.predict([png.getvalue(), *originals])

    distances = np.abs(predictions.probabilities[1:] - predictions.probabilities[0]).max(axis=1)
    assert distances.min() < 1e-5


def test_bad_bytes_are_named_by_index(serving: ServingModel, demo_data_dir: Path) -> None:
    good = (demo_data_dir / "eval/1cat/000.jpg").read_bytes()
    with pytest.raises(InvalidImageError) as raised:
        serving.predict([good, b"this is text", good, good[:30]])
    assert raised.value.indices == [1, 3]


@pytest.mark.slow
def test_calibration_temperature_is_applied_in_the_export(
    demo_data_dir: Path, tmp_path: Path
) -> None:
    """The same weights exported with T = 0.5 serve softmax(log p / 0.5) of the uncalibrated
    export's probabilities, with the same classes, through tf.saved_model.load and through TF
    Serving's session loader alike; calibration.json records T."""
    from components.lib.data.records import preprocess_dataset
    from components.lib.modelling.calibration import read_temperature, scale
    from components.lib.modelling.model import (
        TrainingConfig,
        export_serving_model,
        train_classifier,
    )
    from components.lib.serving.tf_serving import TFServingModel

    dataset = preprocess_dataset(str(demo_data_dir), str(tmp_path / "records"), image_size=32)
    trained = train_classifier(dataset, TrainingConfig(epochs=1, fine_tune_epochs=0))
    for name, temperature in (("raw", 1.0), ("calibrated", 0.5)):
        export_serving_model(
            trained.model, dataset.class_names, 32, str(tmp_path / name), temperature
        )
    photos = [p.read_bytes() for p in sorted(demo_data_dir.glob("eval/*/*"))[:6]]

    raw = ServingModel(str(tmp_path / "raw")).predict(photos)
    calibrated = ServingModel(str(tmp_path / "calibrated")).predict(photos)

    np.testing.assert_allclose(calibrated.probabilities, scale(raw.probabilities, 0.5), atol=1e-5)
    assert calibrated.classes.tolist() == raw.classes.tolist()
    assert read_temperature(str(tmp_path / "calibrated")) == 0.5
    with TFServingModel(str(tmp_path / "calibrated")) as tf_serving:
        classes, probabilities = tf_serving(photos)
    np.testing.assert_allclose(probabilities, calibrated.probabilities, atol=1e-6)
    assert classes.tolist() == raw.classes.tolist()
