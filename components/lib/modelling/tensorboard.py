"""TensorBoard logs of a training: loss, accuracy and learning rate per epoch, and a few augmented
training photos once, cheap enough to write on every run.

The train step writes them under its model artifact (``<model>/tensorboard/``; ``tensorboard
--logdir`` reads it there, local or ``gs://``) and, on Vertex AI, also to
``AIP_TENSORBOARD_LOG_DIR`` when it is set: Vertex AI sets it (``<base output directory>/logs/``)
in a custom training job given a Vertex AI TensorBoard instance, and streams what lands there to
that TensorBoard. The runs and tags follow Keras's own TensorBoard callback (runs ``train`` and
``validation``, tags ``epoch_loss``, ``epoch_accuracy``, ``epoch_learning_rate``), the step is the
epoch counted over both phases, and each phase's first epoch is marked in the ``phase`` text.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import tensorflow as tf

TENSORBOARD_DIR = "tensorboard"
"""The folder of the logs inside the model artifact."""
LOG_DIR_ENV = "AIP_TENSORBOARD_LOG_DIR"
SAMPLE_IMAGES = 6
TRAIN_RUN, VALIDATION_RUN = "train", "validation"


def log_dirs(model_dir: str) -> list[str]:
    """Where a training's logs go: under the model artifact, and Vertex AI's log folder if set."""
    dirs = [os.path.join(model_dir, TENSORBOARD_DIR)]
    if os.environ.get(LOG_DIR_ENV):
        dirs.append(os.environ[LOG_DIR_ENV])
    return dirs


class TrainingBoard:
    """Event files of one training in every folder of ``dirs`` (paths or ``gs://`` URIs)."""

    def __init__(self, dirs: Sequence[str]) -> None:
        self._writers = {
            run: [tf.summary.create_file_writer(os.path.join(d, run)) for d in dirs]
            for run in (TRAIN_RUN, VALIDATION_RUN)
        }

    def _write(self, run: str, write) -> None:
        for writer in self._writers[run]:
            with writer.as_default():
                write()

    def epoch(self, step: int, phase: str, logs: Mapping[str, float], learning_rate: float) -> None:
        """One epoch's figures (``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``) at
        ``step``, the epoch's number counted from the start of training."""

        def train() -> None:
            tf.summary.scalar("epoch_loss", logs["loss"], step=step)
            tf.summary.scalar("epoch_accuracy", logs["accuracy"], step=step)
            tf.summary.scalar("epoch_learning_rate", learning_rate, step=step)

        def validation() -> None:
            tf.summary.scalar("epoch_loss", logs["val_loss"], step=step)
            tf.summary.scalar("epoch_accuracy", logs["val_accuracy"], step=step)

        self._write(TRAIN_RUN, train)
        if "val_loss" in logs:
            self._write(VALIDATION_RUN, validation)

    def phase(self, step: int, phase: str, description: str) -> None:
        """Mark where a phase starts."""
        self._write(TRAIN_RUN, lambda: tf.summary.text("phase", f"{phase}: {description}", step))

    def images(self, batch: tf.Tensor) -> None:
        """A few photos as training sees them (augmented; float pixels 0-255), once."""
        pixels = tf.clip_by_value(tf.cast(batch[:SAMPLE_IMAGES], tf.float32) / 255.0, 0.0, 1.0)
        self._write(
            TRAIN_RUN,
            lambda: tf.summary.image(
                "augmented_samples", pixels, step=0, max_outputs=SAMPLE_IMAGES
            ),
        )

    def close(self) -> None:
        for writers in self._writers.values():
            for writer in writers:
                writer.close()
