"""The exported model under TF Serving's own loader (a TF1 session), as Vertex AI serves it.

``tf.saved_model.load`` (our evaluate step and local endpoint) and TF Serving's C++ loader are
different paths: an export can serve through the first and fail every request through the
second. These tests load the export the way TF Serving does, in this TensorFlow and in the
TensorFlow of the prebuilt Vertex AI image we deploy to, and compare the predictions.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from components.lib.serving.contract import SIGNATURE_NAME
from components.lib.serving.prediction import ServingModel
from components.lib.serving.tf_serving import TFServingError, load_like_tf_serving
from tests.conftest import ROOT, beer_photos, sample_photos

# A Python whose TensorFlow is that of the serving image (.ci/run makes one with 2.15.1).
SERVING_TF_PYTHON_ENV = "IMAGE_CLASSIFIER_SERVING_TF_PYTHON"
TOLERANCE = 1e-5


@pytest.fixture(params=["samples", "beers"])
def photos(request: pytest.FixtureRequest) -> dict[str, bytes]:
    if request.param == "beers":
        return beer_photos(request.getfixturevalue("beer_data_dir"), per_class=4)
    return sample_photos()


@pytest.mark.slow
def test_tf_serving_loader_predicts_like_saved_model_load(
    backbone_model_dir: Path, backbone_serving: ServingModel, photos: dict[str, bytes]
) -> None:
    images = list(photos.values())
    expected = backbone_serving.predict(images)

    with load_like_tf_serving(str(backbone_model_dir)) as served:
        classes, probabilities = served(images)

    assert classes.dtype == np.int64 and probabilities.dtype == np.float32
    np.testing.assert_array_equal(classes, expected.classes)
    np.testing.assert_allclose(probabilities, expected.probabilities, rtol=0, atol=TOLERANCE)
    assert len(set(classes.tolist())) > 1  # the seeded head tells the photos apart


@pytest.mark.slow
def test_serving_image_tensorflow_loads_the_export_like_tf_serving(
    backbone_model_dir: Path, backbone_serving: ServingModel, tmp_path: Path
) -> None:
    """The export of this TensorFlow, loaded by the TensorFlow of the image the upload step picks
    (the side interpreter runs ``tf_serving``'s command line: TensorFlow and the stdlib only).
    One run on the sample photos and, when ``BEER_DATA_DIR`` is set, the beer photos."""
    from components.lib.targets.vertex import prediction_image

    python = os.environ.get(SERVING_TF_PYTHON_ENV)
    if not python:
        pytest.skip(f"{SERVING_TF_PYTHON_ENV} is not set (.ci/run sets it to a TF 2.15 venv)")
    photos = sample_photos()
    if os.environ.get("BEER_DATA_DIR"):
        photos |= beer_photos(Path(os.environ["BEER_DATA_DIR"]), per_class=4)
    paths = []
    for index, data in enumerate(photos.values()):
        paths.append(tmp_path / f"{index:03d}")
        paths[-1].write_bytes(data)
    expected = backbone_serving.predict(list(photos.values()))

    result = subprocess.run(
        [python, "-m", "components.lib.serving.tf_serving", str(backbone_model_dir), *paths],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    image = prediction_image("europe-west4", tf.__version__)
    serving_version = ".".join(re.search(r"tf2-cpu\.(\d+)-(\d+)", image).groups())
    assert answer["tensorflow"].startswith(f"{serving_version}."), (
        f"the upload step deploys {image}; {python} has TF {answer['tensorflow']}"
    )
    np.testing.assert_array_equal(answer["CLASSES"], expected.classes)
    np.testing.assert_allclose(
        answer["PROBABILITIES"], expected.probabilities, rtol=0, atol=TOLERANCE
    )


class _KerasModelModule(tf.Module):
    """How the model was exported before: a tf.Module holding the Keras 3 model itself."""

    def __init__(self, model: keras.Model) -> None:
        super().__init__()
        self.model = model

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="bytes")])
    def serve(self, bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.cast(tf.io.decode_raw(bytes, tf.uint8)[:, :12], tf.float32)
        probabilities = self.model(tf.reshape(pixels, [-1, 2, 2, 3]))
        return {"CLASSES": tf.argmax(probabilities, axis=-1), "PROBABILITIES": probabilities}


def test_an_export_tf_serving_cannot_serve_is_reported(tmp_path: Path) -> None:
    """The export this project made before: ``tf.saved_model.load`` serves it, TF Serving's
    session fails every request; the loader says so in one line."""
    inputs = keras.Input((2, 2, 3))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inputs))
    module = _KerasModelModule(keras.Model(inputs, outputs))
    tf.saved_model.save(module, str(tmp_path), signatures={SIGNATURE_NAME: module.serve})
    images = [bytes(range(12)), bytes(range(12, 24))]
    assert tf.saved_model.load(str(tmp_path)).signatures[SIGNATURE_NAME](bytes=tf.constant(images))[
        "PROBABILITIES"
    ].shape == (2, 2)

    served = load_like_tf_serving(str(tmp_path))
    with pytest.raises(TFServingError, match="FailedPreconditionError: Could not find variable"):
        served(images)
    served.close()


def test_a_folder_without_a_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TFServingError, match=f"cannot load {tmp_path}"):
        load_like_tf_serving(str(tmp_path))
