"""Backbone features computed once per dataset and image size, for training the head.

While the backbone is frozen, every epoch would push the same images through the same
EfficientNet: computing its 1280-d pooled features once and training the head on them gives the
same head in a fraction of the time, and a retrain that changes only head hyperparameters
reuses them (the pipeline's cached features step).
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import tensorflow as tf

from components.lib.data.records import (
    TRAIN,
    VALIDATION,
    PreprocessedDataset,
    batch_examples,
    read_split,
)
from components.lib.modelling.backbone import build_efficientnet_lite
from components.lib.modelling.variants import DEFAULT_BACKBONE

logger = logging.getLogger(__name__)

FEATURES_INFO_FILE = "features.json"


def _features_path(directory: str, split: str) -> str:
    return os.path.join(directory, f"{split}-features.npz")


def extract_features(
    dataset: PreprocessedDataset,
    output_dir: str,
    batch_size: int = 64,
    backbone: str = DEFAULT_BACKBONE,
) -> dict[str, int]:
    """Write the frozen ImageNet ``backbone``'s features of the train and val splits to
    ``output_dir``; returns the image count per split."""
    network = build_efficientnet_lite(
        backbone, (dataset.image_size, dataset.image_size, 3), weights="imagenet"
    )
    size = dataset.image_size
    embed = tf.function(
        lambda images: network(tf.cast(images, tf.float32), training=False),
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8)],
    )
    os.makedirs(output_dir, exist_ok=True)
    counts = {}
    for split in (TRAIN, VALIDATION):
        if not dataset.split_size(split):
            continue
        features, labels = [], []
        for images, batch_labels in read_split(dataset, split, batch_size):
            features.append(embed(images).numpy())
            labels.append(batch_labels.numpy())
        np.savez(
            _features_path(output_dir, split),
            features=np.concatenate(features),
            labels=np.concatenate(labels),
        )
        counts[split] = sum(len(batch) for batch in labels)
        logger.info("%s: features of %d images", split, counts[split])
    with open(os.path.join(output_dir, FEATURES_INFO_FILE), "w") as file:
        json.dump(
            {"backbone": backbone, "image_size": dataset.image_size, "counts": counts},
            file,
            indent=2,
        )
    return counts


def read_features(
    directory: str,
    split: str,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 42,
    repeat: bool = False,
) -> tf.data.Dataset:
    """``(features, label)`` batches of one split, as ``records.read_split`` streams images.

    The features of a split are small (5 KB an image), so they are read into memory whole.
    """
    path = _features_path(directory, split)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no features at {path}; run the features step first")
    with np.load(path) as arrays:
        features, labels = arrays["features"], arrays["labels"]
    examples = tf.data.Dataset.from_tensor_slices((features, labels))
    return batch_examples(
        examples, len(labels), batch_size, shuffle=shuffle, seed=seed, repeat=repeat
    ).prefetch(tf.data.AUTOTUNE)


def check_features(directory: str, image_size: int, backbone: str) -> None:
    """Refuse features made at another image size or with another backbone than this training."""
    with open(os.path.join(directory, FEATURES_INFO_FILE)) as file:
        info = json.load(file)
    if info["backbone"] != backbone or info["image_size"] != image_size:
        raise ValueError(
            f"the features in {directory} come from {info['backbone']} at "
            f"{info['image_size']} px, but training uses {backbone} at {image_size} px"
        )
