"""Sharded TFRecords of the images, written shard by shard in parallel, and the tf.data pipeline
that streams them back.

Each record holds an image's own encoded bytes (JPEG or PNG, as validation left them) and its
label. The input pipeline decodes them with ``images.decode_and_resize``, the function the served
model runs on requests, so training and serving turn a photo into the same pixels. Against
records of decoded pixels (``encoding="pixels"``, kept for that comparison) the files are about
12 times smaller for the beer photos at 224 px and training is as fast (BENCHMARKS.md).

Preprocessing still decodes every image once, so a corrupt file fails here with its path rather
than in the middle of training. Its work is cut into one task per output shard
(``tasks.run_tasks``): a task reads its few hundred files concurrently, decodes them on every
core and writes one file, so memory does not grow with the dataset, and the tasks run in this
process or on Apache Beam.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import random
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import tensorflow as tf
from fsspec.implementations.local import LocalFileSystem

from components.lib.data.images import decode_and_resize
from components.lib.data.layout import SPLITS, discover_layout
from components.lib.data.options import SEED
from components.lib.data.splits import holdout
from components.lib.data.tasks import run_tasks
from components.lib.storage import filesystem, read_files

logger = logging.getLogger(__name__)

TRAIN = "train"
VALIDATION = "val"
CLASS_MAP_FILE = "class_map.json"
STATS_FILE = "stats.json"
ENCODED = "encoded"
PIXELS = "pixels"
ENCODINGS = (ENCODED, PIXELS)
IMAGE_FEATURE = {ENCODED: "image/encoded", PIXELS: "image/pixels"}
LABEL_FEATURE = "label"
SHUFFLE_BUFFER = 2048
"""Records a training shuffle holds: 25 MB of the beer photos' JPEG bytes, whatever the split's
size (a split this size or smaller is shuffled whole)."""
FILES_READ_AT_ONCE = 16
DECODE_BATCH = 32


class UndecodableImageError(ValueError):
    """One or more images cannot be decoded; the message lists every one of them."""


@dataclass(frozen=True)
class PreprocessedDataset:
    """What preprocessing wrote: where, class names in index order, counts per split, and how
    the images are stored (``ENCODED``: their own bytes; ``PIXELS``: decoded and resized)."""

    directory: str
    image_size: int
    class_names: list[str]
    counts: dict[str, dict[str, int]]
    encoding: str = ENCODED

    def split_size(self, split: str) -> int:
        return sum(self.counts.get(split, {}).values())


def shard_name(split: str, shard: int, num_shards: int) -> str:
    return f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"


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


def _image_example(stored: bytes, label: int, encoding: str) -> bytes:
    feature = {
        IMAGE_FEATURE[encoding]: tf.train.Feature(bytes_list=tf.train.BytesList(value=[stored])),
        LABEL_FEATURE: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _decode_one(data: bytes, image_size: int, encoding: str) -> bytes | Exception:
    try:
        image = decode_and_resize(tf.constant(data), image_size)
    except tf.errors.InvalidArgumentError as error:
        return error
    return data if encoding == ENCODED else image.numpy().tobytes()


@functools.lru_cache
def _batch_decoder(image_size: int) -> Callable[[tf.Tensor], tf.Tensor]:
    """``decode_and_resize`` over a batch of image bytes, many at once, as one graph traced once
    per size: a shard costs its decoding, not the setting up of an input pipeline (half a second
    of CPU for each tf.data pipeline, more than a small shard's decoding)."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def decode(batch: tf.Tensor) -> tf.Tensor:
        return tf.map_fn(
            lambda data: decode_and_resize(data, image_size),
            batch,
            fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8),
            parallel_iterations=DECODE_BATCH,
        )

    return decode


def _decode_all(items: list[bytes], image_size: int, encoding: str) -> list[bytes | Exception]:
    """What to store of each item (its own bytes, or its decoded pixels), or why it does not
    decode: decoded in parallel on every core."""
    decode = _batch_decoder(image_size)
    stored: list[bytes | Exception] = []
    try:
        for start in range(0, len(items), DECODE_BATCH):
            batch = items[start : start + DECODE_BATCH]
            images = decode(tf.constant(batch)).numpy()
            stored += [
                data if encoding == ENCODED else image.tobytes()
                for data, image in zip(batch, images, strict=True)
            ]
    except tf.errors.InvalidArgumentError:
        # Some image does not decode: find which, one at a time (rare: validation skips them).
        return [_decode_one(data, image_size, encoding) for data in items]
    return stored


def write_records(output_dir: str, name: str, records: Iterable[bytes]) -> int:
    """Write serialized ``records`` as the TFRecord file ``name`` in ``output_dir`` (a folder or
    ``gs://``: written locally, then uploaded in one piece); returns how many."""
    fs, output = filesystem(output_dir)
    local = isinstance(fs, LocalFileSystem)
    count = 0
    with tempfile.TemporaryDirectory(prefix="records-") as scratch:
        path = os.path.join(output if local else scratch, name)
        with tf.io.TFRecordWriter(path) as writer:
            for record in records:
                writer.write(record)
                count += 1
        if not local:
            fs.put_file(path, f"{output}/{name}")
    return count


@contextlib.contextmanager
def local_file(uri: str) -> Iterator[str]:
    """A local path of the file ``uri`` while in the block: itself, or a download of it."""
    fs, path = filesystem(uri)
    if isinstance(fs, LocalFileSystem):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="records-") as scratch:
        local = os.path.join(scratch, os.path.basename(path))
        fs.get_file(path, local)
        yield local


def write_shard(task: dict[str, Any]) -> dict[str, Any]:
    """One preprocessing task: read the task's files concurrently (many requests in flight on
    gcsfs), decode them in parallel, write its one TFRecord file. Returns the summary
    ``{"split", "name", "images", "failures"}``; a file that cannot be read or decoded is
    left out and named in ``failures``."""
    source_fs, _ = filesystem(task["source"])
    contents = read_files(source_fs, [path for path, _ in task["files"]])
    failures: list[str] = []
    readable = []
    for (path, label), data in zip(task["files"], contents, strict=True):
        if isinstance(data, Exception):
            failures.append(f"{path} (cannot be read: {data})")
        else:
            readable.append((path, label, data))
    stored = _decode_all([data for _, _, data in readable], task["image_size"], task["encoding"])
    examples = []
    for (source, label, _), value in zip(readable, stored, strict=True):
        if isinstance(value, Exception):
            failures.append(f"{source} ({str(value).splitlines()[0][:120]})")
        else:
            examples.append(_image_example(value, label, task["encoding"]))
    written = write_records(task["output"], task["name"], examples)
    return {"split": task["split"], "name": task["name"], "images": written, "failures": failures}


def preprocess_dataset(
    raw_dir: str,
    output_dir: str,
    image_size: int,
    images_per_shard: int = 256,
    seed: int = SEED,
    validation_fraction: float = 0.0,
    encoding: str = ENCODED,
    beam_args: str = "",
) -> PreprocessedDataset:
    """Check that every image of ``raw_dir`` (challenge layout; a folder or a ``gs://`` URI)
    decodes and write the images as sharded TFRecords under ``output_dir`` (likewise).

    With ``validation_fraction`` > 0 a stratified ``val`` split is carved from the training images
    (never from eval) for early stopping. Each split is shuffled (seeded) before it is dealt into
    shards, so every shard mixes the classes. The shards are written by ``write_shard`` tasks,
    here or on Apache Beam (``beam_args``, see ``tasks.run_tasks``). Raises
    UndecodableImageError listing every bad file, after checking all.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    _, layout = discover_layout(raw_dir)
    class_names = layout.class_names
    output_fs, output = filesystem(output_dir)
    output_fs.makedirs(output, exist_ok=True)
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
    counts: dict[str, dict[str, int]] = {}
    tasks = []
    for split, paths in labelled.items():
        random.Random(seed).shuffle(paths)
        num_shards = max(1, math.ceil(len(paths) / images_per_shard))
        tasks += [
            {
                "source": raw_dir,
                "output": output_dir,
                "split": split,
                "name": shard_name(split, shard, num_shards),
                "files": paths[shard::num_shards],
                "image_size": image_size,
                "encoding": encoding,
            }
            for shard in range(num_shards)
        ]
        counts[split] = {
            name: sum(label == index for _, label in paths)
            for index, name in enumerate(class_names)
        }
    summaries = run_tasks(write_shard, tasks, output_dir, beam_args, local_threads=2)
    failures = sorted(failure for summary in summaries for failure in summary["failures"])
    if failures:
        raise UndecodableImageError(
            f"{len(failures)} image(s) cannot be decoded as JPEG/PNG/BMP/GIF; remove or replace "
            "them and run again:\n  " + "\n  ".join(failures)
        )
    for split in labelled:
        shards = [summary for summary in summaries if summary["split"] == split]
        logger.info(
            "%s: %d images in %d shard(s)", split, sum(s["images"] for s in shards), len(shards)
        )

    dataset = PreprocessedDataset(output_dir, image_size, class_names, counts, encoding)
    with output_fs.open(f"{output}/{CLASS_MAP_FILE}", "w") as file:
        json.dump({str(index): name for index, name in enumerate(class_names)}, file, indent=2)
    with output_fs.open(f"{output}/{STATS_FILE}", "w") as file:
        stats = {"image_size": image_size, "encoding": encoding, "counts": counts}
        json.dump(stats, file, indent=2)
    return dataset


def load_preprocessed(directory: str) -> PreprocessedDataset:
    """Read back the class map, counts and encoding that ``preprocess_dataset`` wrote (records
    written before encodings existed hold pixels)."""
    fs, path = filesystem(directory)
    with fs.open(f"{path}/{CLASS_MAP_FILE}") as file:
        class_map = json.load(file)
    with fs.open(f"{path}/{STATS_FILE}") as file:
        stats = json.load(file)
    return PreprocessedDataset(
        directory=directory,
        image_size=int(stats["image_size"]),
        class_names=[class_map[str(index)] for index in range(len(class_map))],
        counts=stats["counts"],
        encoding=stats.get("encoding", PIXELS),
    )


def split_files(directory: str, split: str, written_by: str = "preprocessing") -> list[str]:
    """The TFRecord shards of one split under ``directory`` (a local folder), in name order."""
    pattern = os.path.join(directory, f"{split}-*.tfrecord")
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no TFRecords match {pattern}; run {written_by} first")
    return files


def image_parser(
    image_size: int, encoding: str
) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """``record -> (uint8 image, label)`` for records that ``write_shard`` wrote."""
    features = {
        IMAGE_FEATURE[encoding]: tf.io.FixedLenFeature([], tf.string),
        LABEL_FEATURE: tf.io.FixedLenFeature([], tf.int64),
    }

    def parse(record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        parsed = tf.io.parse_single_example(record, features)
        stored = parsed[IMAGE_FEATURE[encoding]]
        if encoding == ENCODED:
            image = decode_and_resize(stored, image_size)
        else:
            image = tf.reshape(tf.io.decode_raw(stored, tf.uint8), [image_size, image_size, 3])
        return image, parsed[LABEL_FEATURE]

    return parse


def read_records(
    files: Sequence[str],
    parse: Callable[[tf.Tensor], Any],
    count: int,
    batch_size: int,
    shuffle: bool = False,
    seed: int = SEED,
    repeat: bool = False,
) -> tf.data.Dataset:
    """Batches of ``parse(record)`` over the records of ``files`` (``count`` in all), as training
    and validation read them: endless when ``repeat`` (for step-counted epochs).

    With ``shuffle``, anew on every pass: the order of the files is shuffled, up to
    FILES_READ_AT_ONCE of them are read interleaved, and a buffer of SHUFFLE_BUFFER records
    shuffles what comes out. So memory is bounded whatever ``count``, and the effect on order is:
    up to SHUFFLE_BUFFER records (every split of the beer photos), a full uniform shuffle as
    before; beyond, a record comes out within about SHUFFLE_BUFFER places of where the
    interleaved files put it, each pass in another file order. Preprocessing dealt a seeded
    random order of the images into the files, so the classes are mixed in every file, and
    so in every batch, either way. Records are parsed after the shuffle, so the buffer holds
    small serialized records, not decoded images.
    """
    file_names = tf.data.Dataset.from_tensor_slices(list(files))
    if shuffle:
        # The same seed on every worker, so that a multi-worker job's file sharding (applied
        # after this shuffle) gives each worker different files.
        file_names = file_names.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    records = file_names.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), FILES_READ_AT_ONCE),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    if shuffle:
        records = records.shuffle(
            min(count, SHUFFLE_BUFFER) or 1, seed=seed, reshuffle_each_iteration=True
        )
    examples = records.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    if repeat:
        examples = examples.repeat()
    return examples.batch(batch_size)


def read_split(
    dataset: PreprocessedDataset,
    split: str,
    batch_size: int,
    shuffle: bool = False,
    seed: int = SEED,
    repeat: bool = False,
    augment: Callable[..., tf.Tensor] | None = None,
) -> tf.data.Dataset:
    """Stream ``(image, label)`` batches of one split with parallel reads, decoding and
    prefetching: uint8 images, or float32 ones through ``augment`` (a Keras layer, called in
    training mode); ``shuffle`` and ``repeat`` as in ``read_records``."""
    files = split_files(dataset.directory, split)
    parse = image_parser(dataset.image_size, dataset.encoding)
    batches = read_records(
        files, parse, dataset.split_size(split), batch_size, shuffle, seed, repeat
    )
    if augment is not None:
        batches = batches.map(
            lambda images, labels: (augment(tf.cast(images, tf.float32), training=True), labels),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return batches.prefetch(tf.data.AUTOTUNE)
