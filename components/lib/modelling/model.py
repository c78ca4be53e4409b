"""Build, train and export the transfer-learning classifier.

The exported SavedModel carries its own preprocessing (decode, resize) so that clients send raw
image bytes and training and serving cannot disagree on how a photo becomes pixels.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from components.lib.data.images import decode_and_resize
from components.lib.data.records import TRAIN, VALIDATION, PreprocessedDataset, read_split
from components.lib.modelling.backbones import build_backbone, description
from components.lib.modelling.calibration import (
    choose_temperature,
    expected_calibration_error,
    scale,
    write_calibration,
)
from components.lib.modelling.config import TrainingConfig
from components.lib.modelling.distribution import (
    is_chief,
    supports_mixed_precision,
    training_strategy,
    worker_id,
)
from components.lib.modelling.features import read_features
from components.lib.modelling.tensorboard import SAMPLE_IMAGES, TrainingBoard
from components.lib.modelling.training import Checkpoints, Objective, Phase, run_phase
from components.lib.modelling.variants import DEFAULT_BACKBONE, get_variant
from components.lib.serving.contract import (
    CLASS_NAMES_FILE,
    MONITORING_SIGNATURE,
    OUTPUT_CLASSES,
    OUTPUT_EMBEDDINGS,
    OUTPUT_PROBABILITIES,
    SERVING_INPUT,
    SIGNATURE_NAME,
)

logger = logging.getLogger(__name__)


def build_classifier(
    num_classes: int,
    image_size: int,
    dropout: float,
    weights: str | None = "imagenet",
    backbone: str = DEFAULT_BACKBONE,
) -> keras.Model:
    """ImageNet ``backbone`` (a name of ``variants.BACKBONES``) with a new softmax head; RGB
    pixels in [0, 255] in.

    The backbone always runs its batch normalisation in inference mode, so fine-tuning on a
    small dataset does not disturb the ImageNet statistics. The head computes in float32 even
    under mixed precision, so probabilities and the loss keep their precision.
    """
    network = build_backbone(backbone, (image_size, image_size, 3), weights=weights)
    pixels = keras.Input(shape=(image_size, image_size, 3), name="pixels")
    features = network(pixels, training=False)
    features = keras.layers.Dropout(dropout, name="head_dropout")(features)
    probabilities = keras.layers.Dense(
        num_classes, activation="softmax", name="head", dtype="float32"
    )(features)
    return keras.Model(pixels, probabilities, name="classifier")


def head_model(classifier: keras.Model) -> keras.Model:
    """The classifier's dropout and softmax layers on backbone features: training it trains the
    classifier's head, since the layers (and weights) are shared."""
    features = keras.Input(shape=classifier.get_layer("head_dropout").input.shape[1:])
    head = classifier.get_layer("head")
    return keras.Model(features, head(classifier.get_layer("head_dropout")(features)))


def augmentation(brightness_contrast: float, seed: int) -> keras.Sequential:
    """Flips, small rotations and zooms, and (by ``brightness_contrast``) a little relighting of
    float pixel batches. It runs in the tf.data input pipeline, so it only ever applies in
    training and overlaps with the accelerator's work."""
    layers = [
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(0.05, seed=seed + 1),
        keras.layers.RandomZoom(0.1, seed=seed + 2),
    ]
    if brightness_contrast > 0:
        layers += [
            keras.layers.RandomBrightness(brightness_contrast, seed=seed + 3),
            keras.layers.RandomContrast(brightness_contrast, seed=seed + 4),
        ]
    return keras.Sequential(layers, name="augment")


def unfreeze_top(backbone: keras.Model, from_block: int) -> int:
    """Make the backbone trainable from block ``from_block`` up (0: all of it; its block count:
    only its head convolution); batch normalisation stays frozen. Returns the trainable layer
    count.

    The top blocks hold the most task-specific features; the lower ones stay ImageNet's.
    """
    spec = description(backbone)
    num_blocks = spec.num_blocks
    if not 0 <= from_block <= num_blocks:
        raise ValueError(
            f"fine_tune_from_block must be in [0, {num_blocks}] ({backbone.name} has blocks "
            f"0-{num_blocks - 1}; {num_blocks} tunes only its head convolution), got {from_block}"
        )
    backbone.trainable = True
    for layer in backbone.layers:
        layer.trainable = spec.block_of(layer.name) >= from_block and not isinstance(
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


@dataclass(frozen=True)
class TrainedClassifier:
    """A training run's result. ``model`` is a float32 single-device copy of the classifier,
    ready to export with its calibration ``temperature``; only the ``chief`` process of a
    multi-worker job exports it. ``calibration`` holds the temperature, whether it was applied
    and why (``TemperatureChoice``), and the validation split's calibration error before and
    after it."""

    model: keras.Model
    history: dict[str, list[float]]
    chief: bool
    replicas: int
    mixed_precision: bool
    temperature: float = 1.0
    calibration: dict[str, float | int | str] | None = None


def calibrate(
    model: keras.Model, validation: tf.data.Dataset
) -> tuple[float, dict[str, float | int | str] | None]:
    """Choose the temperature on the validation split (``calibration.choose_temperature``: one
    that does not lower the ECE of held-out images is not applied): the model's probabilities on
    those images, the choice, and the split's ECE before and after."""
    probabilities, labels = [], []
    for images, batch_labels in validation:
        probabilities.append(model(tf.cast(images, tf.float32), training=False).numpy())
        labels.append(batch_labels.numpy())
    if not labels:
        return 1.0, None
    probabilities, labels = np.concatenate(probabilities), np.concatenate(labels)
    choice = choose_temperature(probabilities, labels)
    temperature = choice.temperature
    figures = {
        **choice.to_dict(),
        "val_images": len(labels),
        "val_ece_before": expected_calibration_error(probabilities, labels),
        "val_ece_after": expected_calibration_error(scale(probabilities, temperature), labels),
    }
    logger.info("calibration on %d validation images: %s", len(labels), choice.describe())
    return temperature, figures


def train_classifier(
    dataset: PreprocessedDataset,
    config: TrainingConfig,
    features_dir: str | None = None,
    checkpoint_dir: str | None = None,
    mixed_precision: bool | None = None,
    log_dirs: Sequence[str] = (),
) -> TrainedClassifier:
    """Train the new head on the frozen backbone, then fine-tune the top of the backbone at a
    lower rate, each phase stopped early (best weights kept) on the ``val`` split when there is one.

    The head comes first so that fine-tuning starts from sensible gradients instead of
    wrecking the pretrained features with a random head. With ``features_dir`` (what
    ``extract_features`` wrote) the head trains on the backbone's features computed once, not
    on images through the backbone every epoch. Runs under the strategy the environment calls
    for (``distribution.training_strategy``) with the batch size per replica, in mixed precision
    on GPUs with tensor cores (``mixed_precision=None``), and checkpoints every epoch to
    ``checkpoint_dir`` when given, resuming from what is there. With ``log_dirs``, the chief
    writes TensorBoard logs there (``tensorboard.TrainingBoard``).
    """
    keras.utils.set_random_seed(config.seed)
    strategy = training_strategy()
    if mixed_precision is None:
        mixed_precision = supports_mixed_precision()
    replicas = strategy.num_replicas_in_sync
    global_batch = config.batch_size * replicas
    num_classes = len(dataset.class_names)
    objective = Objective(
        num_classes,
        config.label_smoothing,
        class_weights(dataset.counts[TRAIN], config.imbalance_ratio),
    )
    checkpoints = (
        Checkpoints(checkpoint_dir, is_chief(strategy), worker_id(strategy))
        if checkpoint_dir
        else None
    )
    backbone_name = get_variant(config.backbone).keras_name
    steps_per_epoch = math.ceil(dataset.split_size(TRAIN) / global_batch)
    has_validation = dataset.split_size(VALIDATION) > 0
    logger.info(
        "training %s on %d images (%d for validation) of %d classes at %dx%d; %d replica(s), "
        "batch %d; %s; class weights: %s",
        config.backbone,
        dataset.split_size(TRAIN),
        dataset.split_size(VALIDATION),
        num_classes,
        dataset.image_size,
        dataset.image_size,
        replicas,
        global_batch,
        "mixed precision" if mixed_precision else "float32",
        objective.class_weights or "none (balanced)",
    )

    def pixels(split: str, training: bool) -> tf.data.Dataset:
        augment = augmentation(config.brightness_contrast, config.seed) if training else None
        return read_split(
            dataset,
            split,
            global_batch,
            shuffle=training,
            seed=config.seed,
            repeat=training,
            augment=augment,
        )

    def features(split: str, training: bool) -> tf.data.Dataset:
        return read_features(
            features_dir, split, global_batch, shuffle=training, seed=config.seed, repeat=training
        )

    board = TrainingBoard(log_dirs) if log_dirs and is_chief(strategy) else None
    if board:
        augment = augmentation(config.brightness_contrast, config.seed)
        samples = read_split(dataset, TRAIN, SAMPLE_IMAGES, augment=augment)
        board.images(next(iter(samples))[0])

    def fit_phase(
        name: str, model: keras.Model, data, epochs: int, learning_rate, first_step: int = 0
    ) -> dict:
        phase = Phase(
            name=name,
            model=model,
            train=data(TRAIN, training=True),
            steps_per_epoch=steps_per_epoch,
            validation=data(VALIDATION, training=False) if has_validation else None,
            epochs=epochs,
            learning_rate=learning_rate,
            early_stopping_patience=config.early_stopping_patience,
            first_step=first_step,
        )
        return run_phase(strategy, phase, objective, mixed_precision, checkpoints, board)

    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16" if mixed_precision else "float32")
    try:
        with strategy.scope():
            classifier = build_classifier(
                num_classes, dataset.image_size, config.dropout, backbone=config.backbone
            )
            classifier.get_layer(backbone_name).trainable = False
            head = head_model(classifier) if features_dir else classifier
        history = fit_phase(
            "head",
            head,
            features if features_dir else pixels,
            config.epochs,
            config.learning_rate,
        )
        if config.fine_tune_epochs > 0:
            trainable = unfreeze_top(
                classifier.get_layer(backbone_name), config.fine_tune_from_block
            )
            logger.info(
                "fine-tuning %d backbone layers from block %d",
                trainable,
                config.fine_tune_from_block,
            )
            schedule = keras.optimizers.schedules.CosineDecay(
                config.fine_tune_learning_rate, config.fine_tune_epochs * steps_per_epoch
            )
            head_epochs = len(history.get("head_loss", []))
            history |= fit_phase(
                "fine_tune", classifier, pixels, config.fine_tune_epochs, schedule, head_epochs
            )
    finally:
        keras.config.set_dtype_policy(previous_policy)
        if board:
            board.close()
    exported = build_classifier(
        num_classes, dataset.image_size, config.dropout, weights=None, backbone=config.backbone
    )
    exported.set_weights(classifier.get_weights())
    temperature, calibration = (
        calibrate(exported, read_split(dataset, VALIDATION, global_batch))
        if has_validation
        else (1.0, None)
    )
    return TrainedClassifier(
        model=exported,
        history=history,
        chief=is_chief(strategy),
        replicas=replicas,
        mixed_precision=mixed_precision,
        temperature=temperature,
        calibration=calibration,
    )


class _ServingModule(tf.Module):
    """What the SavedModel holds: the classifier's weights and the serving function.

    It tracks the ``tf.Variable`` behind each Keras variable (``.value``), not the Keras model:
    the serving function reaches the model through a closure. Tracking the Keras 3 model itself
    writes every weight twice, and TF Serving's session loader then restores one copy while the
    signature reads the other ("Could not find variable", tensorflow/tensorflow#72963); here the
    checkpoint and the signature's graph name the same variables, so ``tf.saved_model.load`` and
    TF Serving serve the same model.
    """

    def __init__(self, classifier: keras.Model, image_size: int, temperature: float) -> None:
        super().__init__()
        self.classifier_variables = [variable.value for variable in classifier.variables]
        with_features = embedding_model(classifier)

        def predict(images: tf.Tensor) -> dict[str, tf.Tensor]:
            pixels = tf.map_fn(
                lambda encoded: decode_and_resize(encoded, image_size),
                images,
                fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8),
            )
            embeddings, probabilities = with_features(tf.cast(pixels, tf.float32), training=False)
            probabilities = tf.cast(probabilities, tf.float32)
            if temperature != 1.0:  # calibrated: softmax(log p / T), a constant; the same argmax
                log_probabilities = tf.math.log(tf.maximum(probabilities, 1e-30))
                probabilities = tf.nn.softmax(log_probabilities / temperature)
            return {
                OUTPUT_CLASSES: tf.argmax(probabilities, axis=-1, output_type=tf.int64),
                OUTPUT_PROBABILITIES: probabilities,
                OUTPUT_EMBEDDINGS: tf.cast(embeddings, tf.float32),
            }

        def serve(bytes: tf.Tensor) -> dict[str, tf.Tensor]:
            outputs = predict(bytes)
            return {name: outputs[name] for name in (OUTPUT_CLASSES, OUTPUT_PROBABILITIES)}

        spec = [tf.TensorSpec([None], tf.string, name=SERVING_INPUT)]
        self.serve = tf.function(serve, input_signature=spec)
        self.monitor = tf.function(predict, input_signature=spec)


def embedding_model(classifier: keras.Model) -> keras.Model:
    """The classifier with two outputs: the backbone's pooled features (what the head sees,
    before dropout) and the probabilities; the same layers and weights."""
    features = classifier.get_layer("head_dropout").input
    return keras.Model(classifier.inputs, [features, classifier.outputs[0]])


def export_serving_model(
    model: keras.Model,
    class_names: list[str],
    image_size: int,
    export_dir: str,
    temperature: float = 1.0,
    calibration: Mapping[str, object] | None = None,
) -> None:
    """Write a SavedModel whose ``serving_default`` maps ``bytes`` to CLASSES and PROBABILITIES,
    the probabilities scaled by the calibration ``temperature``, loadable both by
    ``tf.saved_model.load`` and by TF Serving's session loader.

    The class names go beside it, because the signature returns indices (the challenge's
    contract), and the temperature with how it was chosen (``calibration``, as training
    returns it) in ``calibration.json``, for evaluation's before/after figures.
    """
    module = _ServingModule(model, image_size, temperature)
    tf.saved_model.save(
        module,
        export_dir,
        signatures={SIGNATURE_NAME: module.serve, MONITORING_SIGNATURE: module.monitor},
    )
    with open(os.path.join(export_dir, CLASS_NAMES_FILE), "w") as file:
        json.dump(class_names, file, indent=2)
    write_calibration(export_dir, temperature, calibration)
