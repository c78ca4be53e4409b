"""Backbone features computed once per dataset and image size, for training the head.

While the backbone is frozen, every epoch would push the same images through the same
EfficientNet: computing its 1280-d pooled features once and training the head on them gives the
same head in a fraction of the time, and a retrain that changes only head hyperparameters
reuses them (the pipeline's cached features step).

Like preprocessing, the work is one task per shard (``tasks.run_tasks``): a shard of images in,
a TFRecord file of their features out, here or on Apache Beam, so memory does not grow with the
dataset; training streams the features back with the same bounded shuffle as images.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import tensorflow as tf

from components.lib.data.options import SEED
from components.lib.data.records import (
    LABEL_FEATURE,
    TRAIN,
    VALIDATION,
    PreprocessedDataset,
    image_parser,
    local_file,
    read_records,
    split_files,
    write_records,
)
from components.lib.data.tasks import run_tasks
from components.lib.modelling.accelerator import require_usable_gpu
from components.lib.modelling.backbones import build_backbone
from components.lib.modelling.variants import DEFAULT_BACKBONE
from components.lib.storage import filesystem

logger = logging.getLogger(__name__)

FEATURES_INFO_FILE = "features.json"
FEATURES = "features"


@functools.cache
def _embedder(backbone: str, image_size: int) -> Callable[[tf.Tensor], tf.Tensor]:
    """The frozen ImageNet ``backbone`` as ``uint8 images -> float32 features``; built once per
    process (a Beam worker runs many tasks), not once per task."""
    network = build_backbone(backbone, (image_size, image_size, 3), weights="imagenet")
    return tf.function(
        lambda images: network(tf.cast(images, tf.float32), training=False),
        input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.uint8)],
    )


def _feature_example(features: bytes, label: int) -> bytes:
    feature = {
        FEATURES: tf.train.Feature(bytes_list=tf.train.BytesList(value=[features])),
        LABEL_FEATURE: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_feature_shard(task: dict[str, Any]) -> dict[str, Any]:
    """One features task: the backbone's features of one shard of images, as a TFRecord file
    of the same name. Returns ``{"split", "images", "size"}`` (size: features per image)."""
    embed = _embedder(task["backbone"], task["image_size"])
    parse = image_parser(task["image_size"], task["encoding"])
    size = 0

    def examples(path: str) -> Iterator[bytes]:
        nonlocal size
        for images, labels in read_records([path], parse, 0, task["batch_size"]).prefetch(1):
            features = embed(images).numpy()
            size = features.shape[1]
            for row, label in zip(features, labels.numpy(), strict=True):
                yield _feature_example(row.tobytes(), int(label))

    with local_file(task["records"]) as path:
        count = write_records(task["output"], os.path.basename(path), examples(path))
    return {"split": task["split"], "images": count, "size": size}


def extract_features(
    dataset: PreprocessedDataset,
    output_dir: str,
    batch_size: int = 64,
    backbone: str = DEFAULT_BACKBONE,
    beam_args: str = "",
    records_uri: str | None = None,
) -> dict[str, int]:
    """Write the frozen ImageNet ``backbone``'s features of the train and val splits to
    ``output_dir`` (a folder or ``gs://``), one file per shard of images, here or on Apache Beam
    (``beam_args``, see ``tasks.run_tasks``); returns the image count per split.

    ``records_uri``: where Beam workers read the shards, when not ``dataset.directory`` (the
    ``gs://`` URI of a dataset read here through the ``/gcs`` mount).
    """
    require_usable_gpu()
    source = (records_uri or dataset.directory).rstrip("/")
    tasks = [
        {
            "records": f"{source}/{os.path.basename(path)}",
            "output": output_dir,
            "split": split,
            "image_size": dataset.image_size,
            "encoding": dataset.encoding,
            "batch_size": batch_size,
            "backbone": backbone,
        }
        for split in (TRAIN, VALIDATION)
        if dataset.split_size(split)
        for path in split_files(dataset.directory, split)
    ]
    fs, output = filesystem(output_dir)
    fs.makedirs(output, exist_ok=True)
    summaries = run_tasks(write_feature_shard, tasks, output_dir, beam_args)
    counts = {
        split: sum(summary["images"] for summary in summaries if summary["split"] == split)
        for split in (TRAIN, VALIDATION)
        if any(summary["split"] == split for summary in summaries)
    }
    for split, count in counts.items():
        logger.info("%s: features of %d images", split, count)
    with fs.open(f"{output}/{FEATURES_INFO_FILE}", "w") as file:
        info = {
            "backbone": backbone,
            "image_size": dataset.image_size,
            "size": max(summary["size"] for summary in summaries),
            "counts": counts,
        }
        json.dump(info, file, indent=2)
    return counts


def _info(directory: str) -> dict[str, Any]:
    with open(os.path.join(directory, FEATURES_INFO_FILE)) as file:
        return json.load(file)


def read_features(
    directory: str,
    split: str,
    batch_size: int,
    shuffle: bool = False,
    seed: int = SEED,
    repeat: bool = False,
) -> tf.data.Dataset:
    """``(features, label)`` batches of one split, streamed and shuffled as
    ``records.read_split`` streams images."""
    files = split_files(directory, split, written_by="the features step")
    info = _info(directory)
    spec = {
        FEATURES: tf.io.FixedLenFeature([], tf.string),
        LABEL_FEATURE: tf.io.FixedLenFeature([], tf.int64),
    }

    def parse(record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        parsed = tf.io.parse_single_example(record, spec)
        features = tf.io.decode_raw(parsed[FEATURES], tf.float32)
        return tf.ensure_shape(features, [info["size"]]), parsed[LABEL_FEATURE]

    count = info["counts"].get(split, 0)
    return read_records(files, parse, count, batch_size, shuffle, seed, repeat).prefetch(
        tf.data.AUTOTUNE
    )


def check_features(directory: str, image_size: int, backbone: str) -> None:
    """Refuse features made at another image size or with another backbone than this training."""
    info = _info(directory)
    if info["backbone"] != backbone or info["image_size"] != image_size:
        raise ValueError(
            f"the features in {directory} come from {info['backbone']} at "
            f"{info['image_size']} px, but training uses {backbone} at {image_size} px"
        )
