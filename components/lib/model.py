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

from components.lib.backbone import BLOCK_ARGS, build_efficientnet_lite0
from components.lib.images import decode_and_resize
from components.lib.records import TRAIN, VALIDATION, PreprocessedDataset, read_split

logger = logging.getLogger(__name__)

CLASS_NAMES_FILE = "class_names.json"
NUM_BLOCKS = sum(block[-1] for block in BLOCK_ARGS)
SERVING_INPUT = "bytes"
OUTPUT_CLASSES = "CLASSES"
OUTPUT_PROBABILITIES = "PROBABILITIES"


@dataclass(frozen=True)
class TrainingConfig:
    """Hyperparameters of one training run (the pipeline's train parameters)."""

    epochs: int = 10
    learning_rate: float = 0.01
    fine_tune_epochs: int = 10
    fine_tune_learning_rate: float = 3e-4
    fine_tune_from_block: int = 4
    batch_size: int = 32
    dropout: float = 0.2
    label_smoothing: float = 0.1
    brightness_contrast: float = 0.2
    early_stopping_patience: int = 3
    imbalance_ratio: float = 1.5
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


def _with_augmentation(
    classifier: keras.Model, image_size: int, brightness_contrast: float, seed: int
) -> keras.Model:
    """The model that training fits: uint8 pixels, flipped, rotated, zoomed and (by
    ``brightness_contrast``) relit a little, then the classifier. Augmentation stays out of the
    exported classifier, so it only ever applies in training."""
    augmentations = [
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(0.05, seed=seed + 1),
        keras.layers.RandomZoom(0.1, seed=seed + 2),
    ]
    if brightness_contrast > 0:
        augmentations += [
            keras.layers.RandomBrightness(brightness_contrast, seed=seed + 3),
            keras.layers.RandomContrast(brightness_contrast, seed=seed + 4),
        ]
    augment = keras.Sequential(augmentations, name="augment")
    pixels = keras.Input(shape=(image_size, image_size, 3), dtype="uint8", name="pixels")
    return keras.Model(pixels, classifier(augment(keras.ops.cast(pixels, "float32"))))


def _depth(layer_name: str) -> int:
    """Block number of a backbone layer: the stem counts as block 0, the head convolution as
    NUM_BLOCKS, layers without weights (rescaling, pooling) as -1."""
    prefix = layer_name.split("_")[0]
    if prefix == "stem":
        return 0
    if prefix == "head":
        return NUM_BLOCKS
    return int(prefix[5:]) if prefix.startswith("block") and prefix[5:].isdigit() else -1


def unfreeze_top(backbone: keras.Model, from_block: int) -> int:
    """Make the backbone trainable from block ``from_block`` up (0: all of it; NUM_BLOCKS: only
    its head convolution); batch normalisation stays frozen. Returns the trainable layer count.

    The top blocks hold the most task-specific features; the lower ones stay ImageNet's.
    """
    if not 0 <= from_block <= NUM_BLOCKS:
        raise ValueError(
            f"fine_tune_from_block must be in [0, {NUM_BLOCKS}] (EfficientNet-Lite0 has blocks "
            f"0-{NUM_BLOCKS - 1}; {NUM_BLOCKS} tunes only its head convolution), got {from_block}"
        )
    backbone.trainable = True
    for layer in backbone.layers:
        layer.trainable = _depth(layer.name) >= from_block and not isinstance(
            layer, keras.layers.BatchNormalization
        )
    return sum(1 for layer in backbone.layers if layer.trainable and layer.weights)


def class_weights(counts: dict[str, int], imbalance_ratio: float) -> dict[int, float] | None:
    """Inverse-frequency weights (mean 1) when the largest class has more than
    ``imbalance_ratio`` times the images of the smallest; None when the classes are balanced."""
    sizes = list(counts.values())
    if max(sizes) <= imbalance_ratio * min(sizes):
        return None
    return {index: sum(sizes) / (len(sizes) * size) for index, size in enumerate(sizes)}


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
    data: tuple[tf.data.Dataset, tf.data.Dataset | None],
    phase: str,
    epochs: int,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
    config: TrainingConfig,
    weights: dict[int, float] | None,
) -> dict[str, list[float]]:
    train, validation = data
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
    )
    callbacks: list[keras.callbacks.Callback] = [_EpochLogger(phase, epochs)]
    if validation is not None and config.early_stopping_patience > 0:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss",
                patience=config.early_stopping_patience,
                restore_best_weights=True,
            )
        )
    history = model.fit(
        train,
        validation_data=validation,
        epochs=epochs,
        class_weight=weights,
        verbose=0,
        callbacks=callbacks,
    )
    return {
        f"{phase}_{name}": [float(v) for v in values] for name, values in history.history.items()
    }


def train_classifier(
    dataset: PreprocessedDataset, config: TrainingConfig
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Train the new head on the frozen backbone, then fine-tune the top of the backbone at a
    lower rate, each phase stopped early (best weights kept) on the ``val`` split when there is one.

    The head comes first so that fine-tuning starts from sensible gradients instead of
    wrecking the pretrained features with a random head. Returns the per-epoch history.
    """
    keras.utils.set_random_seed(config.seed)
    num_classes = len(dataset.class_names)
    classifier = build_classifier(num_classes, dataset.image_size, config.dropout)
    model = _with_augmentation(
        classifier, dataset.image_size, config.brightness_contrast, config.seed
    )

    def one_hot(split: str, shuffle: bool) -> tf.data.Dataset:
        batches = read_split(dataset, split, config.batch_size, shuffle=shuffle, seed=config.seed)
        return batches.map(lambda images, labels: (images, tf.one_hot(labels, num_classes)))

    data = (
        one_hot(TRAIN, shuffle=True),
        one_hot(VALIDATION, shuffle=False) if dataset.split_size(VALIDATION) else None,
    )
    weights = class_weights(dataset.counts[TRAIN], config.imbalance_ratio)
    logger.info(
        "training on %d images (%d for validation) of %d classes at %dx%d; class weights: %s",
        dataset.split_size(TRAIN),
        dataset.split_size(VALIDATION),
        num_classes,
        dataset.image_size,
        dataset.image_size,
        weights or "none (balanced)",
    )
    backbone = classifier.get_layer("efficientnet_lite0")
    backbone.trainable = False
    history = _fit(model, data, "head", config.epochs, config.learning_rate, config, weights)
    if config.fine_tune_epochs > 0:
        trainable = unfreeze_top(backbone, config.fine_tune_from_block)
        logger.info(
            "fine-tuning %d backbone layers from block %d", trainable, config.fine_tune_from_block
        )
        steps = config.fine_tune_epochs * math.ceil(dataset.split_size(TRAIN) / config.batch_size)
        schedule = keras.optimizers.schedules.CosineDecay(config.fine_tune_learning_rate, steps)
        history |= _fit(
            model, data, "fine_tune", config.fine_tune_epochs, schedule, config, weights
        )
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
