"""Tiny SavedModels that keep the serving contract, made in a second: one that TF Serving serves
and one that it cannot (a Keras 3 model held by a ``tf.Module``, the export that issue 11 fixed).

``colour_model`` classifies a photo by its mean colour: class ``i`` is the i-th of ``colours``,
so tests know the right answer; ``reverse=True`` makes a second, distinguishable version.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import tensorflow as tf
from PIL import Image

from components.lib.serving.contract import (
    CLASS_NAMES_FILE,
    OUTPUT_CLASSES,
    OUTPUT_PROBABILITIES,
    SERVING_INPUT,
)

COLOURS = {"0red": (200, 40, 40), "1blue": (40, 40, 200), "2green": (40, 200, 40)}


def colour_instance(colour: tuple[int, int, int]) -> dict:
    """A prediction instance in the challenge's format: a JPEG of one colour."""
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format="JPEG")
    return {"bytes": {"b64": base64.b64encode(buffer.getvalue()).decode()}}


INSTANCES = [colour_instance(colour) for colour in COLOURS.values()]
"""One instance per class, in class order."""


class _ColourModule(tf.Module):
    def __init__(self, colours: list[tuple[int, int, int]], reverse: bool) -> None:
        super().__init__()
        centres = tf.constant(colours, dtype=tf.float32)
        self.centres = tf.Variable(tf.reverse(centres, [0]) if reverse else centres)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=SERVING_INPUT)])
    def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        def mean_colour(image: tf.Tensor) -> tf.Tensor:
            pixels = tf.io.decode_image(image, channels=3, expand_animations=False)
            return tf.reduce_mean(tf.cast(pixels, tf.float32), axis=[0, 1])

        means = tf.map_fn(mean_colour, images, fn_output_signature=tf.float32)
        distances = tf.norm(means[:, None, :] - self.centres[None, :, :], axis=-1)
        probabilities = tf.nn.softmax(-distances / 20.0)
        return {
            OUTPUT_CLASSES: tf.argmax(probabilities, axis=-1),
            OUTPUT_PROBABILITIES: probabilities,
        }


def colour_model(directory: Path, reverse: bool = False) -> Path:
    """A SavedModel that TF Serving serves: plain variables, the contract's signature."""
    module = _ColourModule(list(COLOURS.values()), reverse)
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    (directory / CLASS_NAMES_FILE).write_text(json.dumps(list(COLOURS)))
    return directory


class _KerasInModule(tf.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=SERVING_INPUT)])
    def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        def pixels(image: tf.Tensor) -> tf.Tensor:
            decoded = tf.io.decode_image(image, channels=3, expand_animations=False)
            return tf.image.resize(tf.cast(decoded, tf.float32), [8, 8])

        probabilities = self.model(tf.map_fn(pixels, images, fn_output_signature=tf.float32))
        return {
            OUTPUT_CLASSES: tf.argmax(probabilities, axis=-1),
            OUTPUT_PROBABILITIES: probabilities,
        }


def unservable_model(directory: Path) -> Path:
    """A SavedModel that ``tf.saved_model.load`` serves and TF Serving's loader cannot: every
    session run fails (``Could not find variable ...``)."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(2, 3, name="block1_dw_conv"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(len(COLOURS), activation="softmax"),
        ]
    )
    module = _KerasInModule(model)
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    (directory / CLASS_NAMES_FILE).write_text(json.dumps(list(COLOURS)))
    return directory


class _FailingModule(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=SERVING_INPUT)])
    def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        count = tf.size(images)
        tf.debugging.assert_less(count, 0, message="this model fails every request")
        probabilities = tf.fill([count, len(COLOURS)], 1.0 / len(COLOURS))
        return {
            OUTPUT_CLASSES: tf.zeros([count], tf.int64),
            OUTPUT_PROBABILITIES: probabilities,
        }


def failing_model(directory: Path) -> Path:
    """A SavedModel that loads (the server is healthy) and fails every prediction (HTTP 500):
    a broken canary."""
    module = _FailingModule()
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    (directory / CLASS_NAMES_FILE).write_text(json.dumps(list(COLOURS)))
    return directory
