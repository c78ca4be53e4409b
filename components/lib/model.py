"""Build, train and export the transfer-learning classifier.

The exported SavedModel carries its own preprocessing (decode, resize) so that clients send raw
image bytes and training and serving cannot disagree on how a photo becomes pixels.
"""

from __future__ import annotations

import json
import logging
import math
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
    learning_rate: float = 0.01
    fine_tune_epochs: int = 10
    fine_tune_learning_rate: float = 1e-4
    batch_size: int = 32
    dropout: float = 0.2
    seed: int = 42


def build_classifier(num_classes: int, image_size: int, dropout: float) -> keras.Model:
    """ImageNet EfficientNet-Lite0 with a new softmax head; RGB pixels in [0, 255] in.

    The backbone always runs its batch normalisation in inference mode, so fine-tuning on a
    small dataset does not disturb the ImageNet statistics.
    """
    backbone = build_efficientnet_lite0(input_shape=(image_size, image_size, 3), weights="imagenet")
    pixels = keras.Input(shape=(image_size, image_size, 3), name="pixels")
    features = backbone(pixels, training=False)
    features = keras.layers.Dropout(dropout, name="head_dropout")(features)
    probabilities = keras.layers.Dense(num_classes, activation="softmax", name="head")(features)
    return keras.Model(pixels, probabilities, name="classifier")


def _with_augmentation(classifier: keras.Model, image_size: int) -> keras.Model:
    """The model that training fits: uint8 pixels, flipped, rotated and zoomed a little, then the
    classifier. Augmentation stays out of the exported classifier."""
    augment = keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal"),
            keras.layers.RandomRotation(0.05),
            keras.layers.RandomZoom(0.1),
        ],
        name="augment",
    )
    pixels = keras.Input(shape=(image_size, image_size, 3), dtype="uint8", name="pixels")
    return keras.Model(pixels, classifier(augment(keras.ops.cast(pixels, "float32"))))


class _EpochLogger(keras.callbacks.Callback):
    """One log line per epoch, so a pipeline step shows progress without Keras' progress bars."""

    def __init__(self, phase: str, epochs: int) -> None:
        super().__init__()
        self.phase = phase
        self.epochs = epochs

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        metrics = ", ".join(f"{name}={value:.4f}" for name, value in (logs or {}).items())
        logger.info("%s epoch %d/%d: %s", self.phase, epoch + 1, self.epochs, metrics)


def _fit(
    model: keras.Model,
    train: tf.data.Dataset,
    phase: str,
    epochs: int,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
) -> dict[str, list[float]]:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    history = model.fit(train, epochs=epochs, verbose=0, callbacks=[_EpochLogger(phase, epochs)])
    return {
        f"{phase}_{name}": [float(v) for v in values] for name, values in history.history.items()
    }


def train_classifier(
    dataset: PreprocessedDataset, config: TrainingConfig
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Train the new head on the frozen backbone, then fine-tune the backbone at a lower rate.

    The head comes first so that fine-tuning starts from sensible gradients instead of
    wrecking the pretrained features with a random head. Returns the per-epoch history.
    """
    keras.utils.set_random_seed(config.seed)
    classifier = build_classifier(len(dataset.class_names), dataset.image_size, config.dropout)
    model = _with_augmentation(classifier, dataset.image_size)
    train = read_split(dataset, "train", config.batch_size, shuffle=True, seed=config.seed)
    logger.info(
        "training on %d images of %d classes at %dx%d",
        dataset.split_size("train"),
        len(dataset.class_names),
        dataset.image_size,
        dataset.image_size,
    )
    backbone = classifier.get_layer("efficientnet_lite0")
    backbone.trainable = False
    history = _fit(model, train, "head", config.epochs, config.learning_rate)
    if config.fine_tune_epochs > 0:
        backbone.trainable = True
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
        steps = config.fine_tune_epochs * math.ceil(dataset.split_size("train") / config.batch_size)
        schedule = keras.optimizers.schedules.CosineDecay(config.fine_tune_learning_rate, steps)
        history |= _fit(model, train, "fine_tune", config.fine_tune_epochs, schedule)
    return classifier, history


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
        probabilities = tf.cast(
            self.classifier(tf.cast(pixels, tf.float32), training=False), tf.float32
        )
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
