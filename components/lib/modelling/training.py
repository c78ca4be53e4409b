"""One training loop for every tf.distribute strategy: one device, the GPUs of one machine, or
several machines, with per-epoch checkpoints that a restarted job resumes from.

Not ``model.fit``: under MultiWorkerMirroredStrategy Keras 3's fit fails while building the
model and again when it reduces metrics (keras-team/keras#20585), so the loop runs the train
step through ``strategy.run`` as TensorFlow's custom-loop guide does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass

import keras
import tensorflow as tf

from components.lib.modelling.tensorboard import TrainingBoard
from components.lib.storage import mounted_path

logger = logging.getLogger(__name__)
# TensorFlow logs every checkpoint save at INFO; a training step's log should show its epochs.
tf.get_logger().setLevel(logging.WARNING)

Schedule = float | keras.optimizers.schedules.LearningRateSchedule


@dataclass(frozen=True)
class Objective:
    """The loss the model minimises: smoothed cross-entropy, optionally class-weighted."""

    num_classes: int
    label_smoothing: float
    class_weights: dict[int, float] | None = None


@dataclass(frozen=True)
class Phase:
    """One stretch of training: a model, its data, and how long and how fast it trains.

    ``train`` yields global batches of ``(inputs, int labels)`` forever (``repeat()``);
    ``validation`` is finite and evaluated whole by every worker after each epoch.
    """

    name: str
    model: keras.Model
    train: tf.data.Dataset
    steps_per_epoch: int
    validation: tf.data.Dataset | None
    epochs: int
    learning_rate: Schedule
    early_stopping_patience: int = 0
    first_step: int = 0
    """Epochs trained before this phase: its epochs are logged from ``first_step + 1`` on."""


@dataclass(frozen=True)
class Checkpoints:
    """Where this process keeps its phase checkpoints. Every worker restores from the chief's
    directory; the others write to a scratch copy that they delete, because multi-worker saving
    must run on all workers while only the chief's copy may be kept."""

    directory: str
    chief: bool
    worker: str

    def write_dir(self, phase: str) -> str:
        if self.chief:
            return self.read_dir(phase)
        return os.path.join(self.directory, f"{phase}-scratch-{self.worker}")

    def read_dir(self, phase: str) -> str:
        return os.path.join(self.directory, phase)

    def save(self, checkpoint: tf.train.Checkpoint, phase: str, name: str) -> None:
        directory = self.write_dir(phase)
        tf.train.CheckpointManager(checkpoint, os.path.join(directory, name), max_to_keep=1).save()
        if not self.chief:
            shutil.rmtree(directory, ignore_errors=True)

    def restore(self, checkpoint: tf.train.Checkpoint, phase: str, name: str) -> bool:
        path = tf.train.latest_checkpoint(os.path.join(self.read_dir(phase), name))
        if path:
            checkpoint.read(path).expect_partial()
        return bool(path)


def checkpoint_directory(pipeline_root: str, **inputs: object) -> str:
    """The checkpoint folder of a training run: under the pipeline root, named by a hash of the
    run's inputs, so the same training restarted (a preempted spot VM, a retried task, a local
    run interrupted and started again) finds it, and a different one does not.

    ``gs://`` roots map to Vertex AI's Cloud Storage FUSE mount (``/gcs/``) by the storage seam.
    """
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()
    return os.path.join(mounted_path(pipeline_root), "checkpoints", f"train-{key[:16]}")


class _PhaseState:
    """What besides the weights a resumed phase needs: the next epoch, early stopping's best
    validation loss and wait, whether the phase finished, and the history so far."""

    def __init__(self) -> None:
        self.epoch = tf.Variable(0, dtype=tf.int64)
        self.best_loss = tf.Variable(math.inf, dtype=tf.float64)
        self.wait = tf.Variable(0, dtype=tf.int64)
        self.finished = tf.Variable(False)
        self.history = tf.Variable("{}")

    def trackables(self) -> dict[str, tf.Variable]:
        return dict(vars(self))


def _step_functions(
    strategy: tf.distribute.Strategy,
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    objective: Objective,
):
    weights = [1.0] * objective.num_classes
    for index, weight in (objective.class_weights or {}).items():
        weights[index] = weight
    class_weight = tf.constant(weights, tf.float32)
    cross_entropy = keras.losses.CategoricalCrossentropy(
        label_smoothing=objective.label_smoothing, reduction=None
    )

    def losses(labels: tf.Tensor, probabilities: tf.Tensor) -> tf.Tensor:
        return cross_entropy(tf.one_hot(labels, objective.num_classes), probabilities)

    def correct(labels: tf.Tensor, probabilities: tf.Tensor) -> tf.Tensor:
        predicted = tf.argmax(probabilities, axis=-1, output_type=labels.dtype)
        return tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float32))

    def replica_step(inputs: tf.Tensor, labels: tf.Tensor):
        with tf.GradientTape() as tape:
            probabilities = tf.cast(model(inputs, training=True), tf.float32)
            per_example = losses(labels, probabilities) * tf.gather(class_weight, labels)
            loss = tf.nn.compute_average_loss(per_example)
            scaled_loss = optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, model.trainable_variables)
        optimizer.apply(gradients, model.trainable_variables)
        return loss, correct(labels, probabilities), tf.cast(tf.size(labels), tf.float32)

    @tf.function
    def train_step(iterator) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        results = strategy.run(replica_step, args=next(iterator))
        loss, hits, count = (
            strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None) for value in results
        )
        return loss, hits, count

    @tf.function
    def validation_step(inputs: tf.Tensor, labels: tf.Tensor):
        probabilities = tf.cast(model(inputs, training=False), tf.float32)
        return (
            tf.reduce_sum(losses(labels, probabilities)),
            correct(labels, probabilities),
            tf.cast(tf.size(labels), tf.float32),
        )

    return train_step, validation_step


def _add_up(results: Iterable[tuple[tf.Tensor, ...]]) -> list[float]:
    """Sum per-batch ``(loss, hits, count)`` tensors where they are and read the totals once,
    so the steps of an epoch never wait for the host."""
    totals: list[tf.Tensor] | None = None
    for result in results:
        if totals is None:
            totals = list(result)
        else:
            totals = [total + value for total, value in zip(totals, result, strict=True)]
    return [float(total) for total in totals or ()]


def run_phase(
    strategy: tf.distribute.Strategy,
    phase: Phase,
    objective: Objective,
    mixed_precision: bool = False,
    checkpoints: Checkpoints | None = None,
    board: TrainingBoard | None = None,
) -> dict[str, list[float]]:
    """Train ``phase.model`` in place; returns its history (``<phase>_loss``, ``_accuracy``,
    ``_val_loss``, ``_val_accuracy`` per epoch). With a validation split and a patience, stops
    early and keeps the weights of the lowest validation loss. With ``checkpoints``, saves after
    every epoch and first resumes from what an earlier, interrupted run of this phase saved.
    With ``board``, every epoch's figures and learning rate go to TensorBoard."""
    model = phase.model
    with strategy.scope():
        optimizer = keras.optimizers.Adam(phase.learning_rate)
        if mixed_precision:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
    state = _PhaseState()
    latest = tf.train.Checkpoint(model=model, optimizer=optimizer, **state.trackables())
    best = tf.train.Checkpoint(model=model)
    best_weights = None
    if checkpoints:
        if checkpoints.restore(best, phase.name, "best"):
            best_weights = model.get_weights()
        checkpoints.restore(latest, phase.name, "latest")
    history: dict[str, list[float]] = json.loads(state.history.numpy().decode())
    if bool(state.finished.numpy()):
        logger.info("%s: finished before, weights from the checkpoint", phase.name)
        return history
    if history:
        logger.info(
            "%s: resuming from the checkpoint in %s at epoch %d/%d",
            phase.name,
            checkpoints.read_dir(phase.name),
            int(state.epoch.numpy()) + 1,
            phase.epochs,
        )

    train_step, validation_step = _step_functions(strategy, model, optimizer, objective)
    batches = iter(strategy.experimental_distribute_dataset(phase.train))
    patience = phase.early_stopping_patience if phase.validation is not None else 0
    while int(state.epoch.numpy()) < phase.epochs:
        epoch = int(state.epoch.numpy())
        if board and epoch == 0:
            board.phase(phase.first_step + 1, phase.name, f"{phase.epochs} epoch(s)")
        loss, hits, count = _add_up(train_step(batches) for _ in range(phase.steps_per_epoch))
        logs = {"loss": loss / phase.steps_per_epoch, "accuracy": hits / count}
        if phase.validation is not None:
            loss, hits, count = _add_up(validation_step(*batch) for batch in phase.validation)
            logs |= {"val_loss": loss / count, "val_accuracy": hits / count}
        if board:
            # a schedule's value at this step; a variable mirrored across replicas reads as a tensor
            rate = float(tf.convert_to_tensor(optimizer.learning_rate))
            board.epoch(phase.first_step + epoch + 1, phase.name, logs, rate)
        for name, value in logs.items():
            history.setdefault(f"{phase.name}_{name}", []).append(value)
        logger.info(
            "%s epoch %d/%d: %s",
            phase.name,
            epoch + 1,
            phase.epochs,
            ", ".join(f"{name}={value:.4f}" for name, value in logs.items()),
        )
        state.epoch.assign(epoch + 1)
        stop = False
        if patience:
            if logs["val_loss"] < float(state.best_loss.numpy()):
                state.best_loss.assign(logs["val_loss"])
                state.wait.assign(0)
                best_weights = model.get_weights()
                if checkpoints:
                    checkpoints.save(best, phase.name, "best")
            else:
                state.wait.assign_add(1)
                stop = int(state.wait.numpy()) >= patience
        if stop or int(state.epoch.numpy()) == phase.epochs:
            if best_weights is not None:
                model.set_weights(best_weights)
            state.finished.assign(True)
            if stop:
                logger.info(
                    "%s: no lower val_loss for %d epochs; stopping with the best weights",
                    phase.name,
                    patience,
                )
        state.history.assign(json.dumps(history))
        if checkpoints:
            checkpoints.save(latest, phase.name, "latest")
        if stop:
            break
    return history
