"""Build, train and export the transfer-learning classifier.

The exported SavedModel carries its own preprocessing (decode, resize) so that clients send raw
image bytes and training and serving cannot disagree on how a photo becomes pixels.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import keras
import tensorflow as tf

from components.lib.backbone import build_efficientnet_lite0
from components.lib.images import decode_and_resize
from components.lib.records import PreprocessedDataset, read_split

logger = logging.getLogger(__name__)

CLASS_NAMES_FILE = "class_names.json"
SERVING_INPUT = "bytes"
OUTPUT_CLASSES = "CLASSES"
OUTPUT_PROBABILITIES = "PROBABILITIES"


@dataclass(frozen=True)
class TrainingConfig:
    """Hyperparameters of one training run (the pipeline's train parameters)."""

    epochs: int = 10
    learning_rate: float = 1e-3
    batch_size: int = 32
    dropout: float = 0.2
    seed: int = 42


def build_classifier(num_classes: int, image_size: int, dropout: float) -> keras.Model:
    """A frozen ImageNet EfficientNet-Lite0 with a new softmax head; uint8 RGB pixels in."""
    backbone = build_efficientnet_lite0(input_shape=(image_size, image_size, 3), weights="imagenet")
    backbone.trainable = False
    pixels = keras.Input(shape=(image_size, image_size, 3), dtype="uint8", name="pixels")
    features = backbone(keras.ops.cast(pixels, "float32"), training=False)
    features = keras.layers.Dropout(dropout, name="head_dropout")(features)
    probabilities = keras.layers.Dense(num_classes, activation="softmax", name="head")(features)
    return keras.Model(pixels, probabilities, name="classifier")


class _EpochLogger(keras.callbacks.Callback):
    """One log line per epoch, so a pipeline step shows progress without Keras' progress bars."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        metrics = ", ".join(f"{name}={value:.4f}" for name, value in (logs or {}).items())
        logger.info("epoch %d/%d: %s", epoch + 1, self.epochs, metrics)


def train_classifier(
    dataset: PreprocessedDataset, config: TrainingConfig
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Train the head on the train split; returns the model and its per-epoch history."""
    keras.utils.set_random_seed(config.seed)
    model = build_classifier(len(dataset.class_names), dataset.image_size, config.dropout)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    train = read_split(dataset, "train", config.batch_size, shuffle=True, seed=config.seed)
    logger.info(
        "training on %d images, %d classes, %dx%d, %d epochs",
        dataset.split_size("train"),
        len(dataset.class_names),
        dataset.image_size,
        dataset.image_size,
        config.epochs,
    )
    history = model.fit(
        train, epochs=config.epochs, verbose=0, callbacks=[_EpochLogger(config.epochs)]
    )
    return model, {name: [float(v) for v in values] for name, values in history.history.items()}


class _ServingModule(tf.Module):
    def __init__(self, classifier: keras.Model, image_size: int) -> None:
        super().__init__()
        self.classifier = classifier
        self.image_size = image_size

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=SERVING_INPUT)])
    def serve(self, bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.map_fn(
            lambda encoded: decode_and_resize(encoded, self.image_size),
            bytes,
            fn_output_signature=tf.TensorSpec([self.image_size, self.image_size, 3], tf.uint8),
        )
        probabilities = tf.cast(self.classifier(pixels, training=False), tf.float32)
        return {
            OUTPUT_CLASSES: tf.argmax(probabilities, axis=-1, output_type=tf.int64),
            OUTPUT_PROBABILITIES: probabilities,
        }


def export_serving_model(
    model: keras.Model, class_names: list[str], image_size: int, export_dir: str
) -> None:
    """Write a SavedModel whose ``serving_default`` maps ``bytes`` to CLASSES and PROBABILITIES.

    The class names go beside it, because the signature returns indices (the challenge's contract).
    """
    module = _ServingModule(model, image_size)
    tf.saved_model.save(module, export_dir, signatures={"serving_default": module.serve})
    with open(os.path.join(export_dir, CLASS_NAMES_FILE), "w") as file:
        json.dump(class_names, file, indent=2)
