"""Edge export: the trained classifier as TFLite models that run on a phone or a board.

Two models go in ``<model>/tflite/`` beside the SavedModel, so that the registry keeps them
with the version (its artifact URI is that folder):

- ``float16.tflite``: weights stored in float16 (half the size), computing in float32;
  float32 RGB pixels in [0, 255] in, float32 probabilities out.
- ``int8.tflite``: full-integer quantization, weights and activations in int8, its ranges
  calibrated on training images; uint8 RGB pixels in, uint8 probabilities out (the
  quantization parameters of both are in the model), so it runs on integer-only accelerators.

Both take one ``image_size`` x ``image_size`` photo (batch 1): an app decodes and resizes the
photo itself (the SavedModel does it in its graph) and reads the class names from
``labels.txt``. The calibration temperature is folded into the head (softmax(z / T) =
softmax of the logits of a head whose weights are divided by T), so the probabilities are the
SavedModel's, with no extra operation. ``tflite.json`` lists the models for evaluation.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import keras
import numpy as np
import tensorflow as tf

from components.lib.data.records import TRAIN, PreprocessedDataset, read_split

logger = logging.getLogger(__name__)

EDGE_DIR = "tflite"
MANIFEST_FILE = "tflite.json"
LABELS_FILE = "labels.txt"
FLOAT16, INT8 = "float16", "int8"
CALIBRATION_IMAGES = 200
"""Training images that int8 quantization measures activation ranges on (TFLite's guide: a
few hundred cover the ranges; more only cost conversion time)."""


@dataclass(frozen=True)
class EdgeModel:
    """One TFLite model of an export: its kind (``FLOAT16``, ``INT8``), its file relative to
    the model folder, its size, and how many images calibrated it (0: not calibrated)."""

    kind: str
    file: str
    size_bytes: int
    image_size: int
    calibration_images: int = 0


class _EdgeModule(tf.Module):
    """What the converter reads: the classifier's variables (tracked, as in the SavedModel's
    module) and a batch-1 function from float pixels to calibrated probabilities, the head's
    logits divided by ``temperature`` before the softmax."""

    def __init__(self, classifier: keras.Model, image_size: int, temperature: float) -> None:
        super().__init__()
        self.classifier_variables = [variable.value for variable in classifier.variables]
        head = classifier.get_layer("head")
        features = keras.Model(classifier.input, head.input)
        kernel = tf.constant(head.kernel.numpy() / temperature)
        bias = tf.constant(head.bias.numpy() / temperature)

        def probabilities(pixels: tf.Tensor) -> tf.Tensor:
            logits = tf.matmul(features(pixels, training=False), kernel) + bias
            return tf.nn.softmax(logits)

        spec = tf.TensorSpec([1, image_size, image_size, 3], tf.float32)
        self.probabilities = tf.function(probabilities, input_signature=[spec])


def calibration_images(dataset: PreprocessedDataset, count: int = CALIBRATION_IMAGES):
    """A callable yielding up to ``count`` training images as float32 ``[1, H, W, 3]`` batches,
    spread evenly over the whole split (every k-th record: all classes, no shuffle buffer)."""
    total = dataset.split_size(TRAIN)
    step = max(1, math.ceil(total / count))

    def images() -> Iterator[list[np.ndarray]]:
        records = read_split(dataset, TRAIN, 1).enumerate()
        chosen = records.filter(lambda index, _: index % step == 0).take(count)
        for _, (image, _) in chosen:
            yield [tf.cast(image, tf.float32).numpy()]

    return images, min(count, math.ceil(total / step))


def _convert(module: _EdgeModule, kind: str, representative=None) -> bytes:
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.probabilities.get_concrete_function()], module
    )
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if kind == FLOAT16:
        converter.target_spec.supported_types = [tf.float16]
    else:
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    return converter.convert()


def export_edge_models(
    classifier: keras.Model,
    dataset: PreprocessedDataset,
    export_dir: str,
    temperature: float = 1.0,
) -> list[EdgeModel]:
    """Write the float16 and int8 TFLite models of ``classifier`` (float32, as training returns
    it) with ``labels.txt`` and ``tflite.json`` under ``export_dir/tflite``; int8 is calibrated
    on ``dataset``'s training images."""
    folder = os.path.join(export_dir, EDGE_DIR)
    os.makedirs(folder, exist_ok=True)
    image_size = dataset.image_size
    module = _EdgeModule(classifier, image_size, temperature)
    representative, calibrated = calibration_images(dataset)
    models = []
    for kind in (FLOAT16, INT8):
        flatbuffer = _convert(module, kind, representative)
        file = os.path.join(EDGE_DIR, f"{kind}.tflite")
        with open(os.path.join(export_dir, file), "wb") as handle:
            handle.write(flatbuffer)
        models.append(
            EdgeModel(kind, file, len(flatbuffer), image_size, calibrated if kind == INT8 else 0)
        )
        logger.info("edge export: %s, %.2f MB", file, len(flatbuffer) / 1e6)
    with open(os.path.join(folder, LABELS_FILE), "w") as handle:
        handle.write("".join(f"{name}\n" for name in dataset.class_names))
    with open(os.path.join(folder, MANIFEST_FILE), "w") as handle:
        json.dump([asdict(model) for model in models], handle, indent=2)
    return models


def read_edge_models(model_dir: str) -> list[EdgeModel]:
    """The TFLite models exported beside the SavedModel in ``model_dir``; none when it was
    exported without them."""
    path = os.path.join(model_dir, EDGE_DIR, MANIFEST_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [EdgeModel(**entry) for entry in json.load(handle)]
