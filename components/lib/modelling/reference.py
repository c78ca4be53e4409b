"""The monitoring reference of a trained classifier (``monitoring.reference``): the embeddings
of its training photos and its served confidences on the validation photos.

One pass of the training split through the backbone without augmentation (no gradients: a
fraction of one training epoch), keeping a class-stratified sample of ``REFERENCE_SIZE``, and
one pass of the validation split through the whole classifier, scaled by the calibration
temperature as the export serves it.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from components.lib.data.records import TRAIN, VALIDATION, PreprocessedDataset, read_split
from components.lib.modelling.calibration import scale
from components.lib.modelling.model import embedding_model
from components.lib.monitoring.reference import REFERENCE_SIZE, Reference, reference_of

BATCH_SIZE = 32


def _predict_split(
    model: keras.Model, dataset: PreprocessedDataset, split: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings, probabilities and labels of every photo of ``split``."""
    embeddings, probabilities, labels = [], [], []
    for images, batch_labels in read_split(dataset, split, BATCH_SIZE):
        features, predicted = model(tf.cast(images, tf.float32), training=False)
        embeddings.append(np.asarray(features, np.float32))
        probabilities.append(np.asarray(predicted, np.float32))
        labels.append(batch_labels.numpy())
    if not labels:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), np.zeros(0, np.int32)
    return np.concatenate(embeddings), np.concatenate(probabilities), np.concatenate(labels)


def build_reference(
    classifier: keras.Model,
    dataset: PreprocessedDataset,
    temperature: float = 1.0,
    size: int = REFERENCE_SIZE,
    seed: int = 0,
) -> Reference:
    """``classifier``'s reference on ``dataset``; the validation split's predictions, or the
    train split's where there is no validation split."""
    model = embedding_model(classifier)
    embeddings, probabilities, labels = _predict_split(model, dataset, TRAIN)
    if dataset.split_size(VALIDATION) > 0:
        _, probabilities, _ = _predict_split(model, dataset, VALIDATION)
    return reference_of(
        dataset.class_names,
        embeddings,
        labels,
        scale(probabilities, temperature),
        size,
        seed,
    )
