"""Sharded TFRecords of decoded, resized images, and the tf.data pipeline that reads them back.

Preprocessing decodes every image once, so a corrupt file fails here with its path rather than
in the middle of training, and training reads fixed-size uint8 pixels without any Python loop.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass

import tensorflow as tf

from components.lib.data.images import decode_and_resize
from components.lib.data.layout import SPLITS, discover_layout
from components.lib.data.splits import holdout

logger = logging.getLogger(__name__)

TRAIN = "train"
VALIDATION = "val"
CLASS_MAP_FILE = "class_map.json"
STATS_FILE = "stats.json"


class UndecodableImageError(ValueError):
    """One or more images cannot be decoded; the message lists every one of them."""


@dataclass(frozen=True)
class PreprocessedDataset:
    """What preprocessing wrote: where, class names in index order, and counts per split."""

    directory: str
    image_size: int
    class_names: list[str]
    counts: dict[str, dict[str, int]]

    def split_size(self, split: str) -> int:
        return sum(self.counts.get(split, {}).values())


def _example(pixels: bytes, label: int, image_size: int) -> tf.train.Example:
    feature = {
        "image/pixels": tf.train.Feature(bytes_list=tf.train.BytesList(value=[pixels])),
        "image/size": tf.train.Feature(int64_list=tf.train.Int64List(value=[image_size])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _decode_all(
    labelled_paths: list[tuple[str, int]], image_size: int
) -> tuple[list[tuple[bytes, int]], list[str]]:
    decoded, failures = [], []
    for path, label in labelled_paths:
        try:
            with open(path, "rb") as file:
                pixels = decode_and_resize(tf.constant(file.read()), image_size)
        except (tf.errors.InvalidArgumentError, OSError) as error:
            failures.append(f"{path} ({str(error).splitlines()[0][:120]})")
            continue
        decoded.append((pixels.numpy().tobytes(), label))
    return decoded, failures


def carve_validation(
    labelled_paths: list[tuple[str, int]], fraction: float, seed: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Split training images into (train, validation), stratified by class and seeded.

    Each class gives ``round(fraction * n)`` images (at least one, never all of them), so early
    stopping sees every class and the eval split stays untouched.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {fraction}")
    train, validation = [], []
    for label in sorted({label for _, label in labelled_paths}):
        paths = [path for path, path_label in labelled_paths if path_label == label]
        kept, held_out = holdout(paths, fraction, f"{seed}-{label}")
        validation += [(path, label) for path in held_out]
        train += [(path, label) for path in kept]
    return train, validation


def _write_shards(
    split: str, decoded: list[tuple[bytes, int]], output_dir: str, image_size: int, per_shard: int
) -> None:
    num_shards = max(1, math.ceil(len(decoded) / per_shard))
    for shard in range(num_shards):
        shard_path = os.path.join(output_dir, f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord")
        with tf.io.TFRecordWriter(shard_path) as writer:
            for pixels, label in decoded[shard::num_shards]:
                writer.write(_example(pixels, label, image_size).SerializeToString())
    logger.info("%s: %d images in %d shard(s)", split, len(decoded), num_shards)


def preprocess_dataset(
    raw_dir: str,
    output_dir: str,
    image_size: int,
    images_per_shard: int = 256,
    seed: int = 42,
    validation_fraction: float = 0.0,
) -> PreprocessedDataset:
    """Decode and resize ``raw_dir`` (challenge layout) into sharded TFRecords under ``output_dir``.

    With ``validation_fraction`` > 0 a stratified ``val`` split is carved from the training images
    (never from eval) for early stopping. Examples are shuffled before sharding so every shard
    mixes the classes. Raises UndecodableImageError listing every bad file, after checking all.
    """
    _, layout = discover_layout(raw_dir)
    class_names = layout.class_names
    os.makedirs(output_dir, exist_ok=True)
    labelled = {
        split: [
            (path, index)
            for index, name in enumerate(class_names)
            for path in layout.files[split][name]
        ]
        for split in SPLITS
    }
    labelled[TRAIN], validation = carve_validation(labelled[TRAIN], validation_fraction, seed)
    if validation:
        labelled[VALIDATION] = validation
    failures: list[str] = []
    counts: dict[str, dict[str, int]] = {}
    for split, paths in labelled.items():
        random.Random(seed).shuffle(paths)
        decoded, bad = _decode_all(paths, image_size)
        failures.extend(bad)
        _write_shards(split, decoded, output_dir, image_size, images_per_shard)
        counts[split] = {
            name: sum(label == index for _, label in paths)
            for index, name in enumerate(class_names)
        }
    if failures:
        raise UndecodableImageError(
            f"{len(failures)} image(s) cannot be decoded as JPEG/PNG/BMP/GIF; remove or replace "
            "them and run again:\n  " + "\n  ".join(failures)
        )

    dataset = PreprocessedDataset(
        directory=output_dir, image_size=image_size, class_names=class_names, counts=counts
    )
    with open(os.path.join(output_dir, CLASS_MAP_FILE), "w") as file:
        json.dump({str(index): name for index, name in enumerate(class_names)}, file, indent=2)
    with open(os.path.join(output_dir, STATS_FILE), "w") as file:
        json.dump({"image_size": image_size, "counts": dataset.counts}, file, indent=2)
    return dataset


def load_preprocessed(directory: str) -> PreprocessedDataset:
    """Read back the class map and counts that ``preprocess_dataset`` wrote."""
    with open(os.path.join(directory, CLASS_MAP_FILE)) as file:
        class_map = json.load(file)
    with open(os.path.join(directory, STATS_FILE)) as file:
        stats = json.load(file)
    return PreprocessedDataset(
        directory=directory,
        image_size=int(stats["image_size"]),
        class_names=[class_map[str(index)] for index in range(len(class_map))],
        counts=stats["counts"],
    )


def batch_examples(
    examples: tf.data.Dataset,
    count: int,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 42,
    repeat: bool = False,
) -> tf.data.Dataset:
    """Batches of ``examples`` (``count`` of them), as training and validation read them:
    shuffled whole and anew every pass when ``shuffle``, endless when ``repeat`` (for
    step-counted epochs)."""
    if shuffle:
        examples = examples.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        examples = examples.repeat()
    return examples.batch(batch_size)


def read_split(
    dataset: PreprocessedDataset,
    split: str,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 42,
    repeat: bool = False,
    augment: Callable[..., tf.Tensor] | None = None,
) -> tf.data.Dataset:
    """Stream ``(image, label)`` batches of one split with parallel reads and prefetching:
    uint8 images, or float32 ones through ``augment`` (a Keras layer, called in training mode);
    ``shuffle`` and ``repeat`` as in ``batch_examples``."""
    pattern = os.path.join(dataset.directory, f"{split}-*.tfrecord")
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no TFRecords match {pattern}; run preprocessing first")
    size = dataset.image_size
    features = {
        "image/pixels": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
    }

    def parse(record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        parsed = tf.io.parse_single_example(record, features)
        image = tf.reshape(tf.io.decode_raw(parsed["image/pixels"], tf.uint8), [size, size, 3])
        return image, parsed["label"]

    # Parsed before the shuffle (the same order), so parsing overlaps with filling its buffer.
    examples = tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE).map(
        parse, num_parallel_calls=tf.data.AUTOTUNE
    )
    batches = batch_examples(
        examples, dataset.split_size(split), batch_size, shuffle=shuffle, seed=seed, repeat=repeat
    )
    if augment is not None:
        batches = batches.map(
            lambda images, labels: (augment(tf.cast(images, tf.float32), training=True), labels),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return batches.prefetch(tf.data.AUTOTUNE)
