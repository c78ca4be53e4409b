"""Preprocessing into TFRecords, and reading them back with tf.data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.lib.data import records
from components.lib.data.records import (
    UndecodableImageError,
    carve_validation,
    load_preprocessed,
    preprocess_dataset,
    read_split,
)
from tests.conftest import make_layout


def test_preprocess_writes_shards_class_map_and_counts(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "data", {"0red": 5, "1blue": 3})
    out = tmp_path / "records"
    result = preprocess_dataset(str(root), str(out), image_size=32, images_per_shard=3)

    assert sorted(p.name for p in out.glob("train-*.tfrecord")) == [
        f"train-{i:05d}-of-00003.tfrecord" for i in range(3)
    ]
    assert json.loads((out / "class_map.json").read_text()) == {"0": "0red", "1": "1blue"}
    stats = json.loads((out / "stats.json").read_text())
    assert stats == {
        "image_size": 32,
        "encoding": "encoded",
        "counts": {"train": {"0red": 5, "1blue": 3}, "eval": {"0red": 5, "1blue": 3}},
    }
    assert load_preprocessed(str(out)) == result


def test_read_split_returns_resized_pixels_with_labels(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "data", {"0red": 3, "1blue": 2})
    dataset = preprocess_dataset(str(root), str(tmp_path / "records"), image_size=24)

    images, labels = [], []
    for batch_images, batch_labels in read_split(dataset, "train", batch_size=2):
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
    images, labels = np.concatenate(images), np.concatenate(labels)

    assert images.shape == (5, 24, 24, 3) and images.dtype == np.uint8
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1]
    red = images[labels == 0].mean(axis=(0, 1, 2))
    blue = images[labels == 1].mean(axis=(0, 1, 2))
    assert red[0] > 150 > red[2] and blue[2] > 150 > blue[0]


def test_png_grayscale_and_rgba_become_rgb(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "data", {"0red": 1, "1blue": 1})
    Image.new("L", (40, 30), 128).save(root / "train/0red/gray.png")
    Image.new("RGBA", (30, 40), (10, 20, 30, 128)).save(root / "train/1blue/alpha.png")
    dataset = preprocess_dataset(str(root), str(tmp_path / "records"), image_size=16)
    assert dataset.counts["train"] == {"0red": 2, "1blue": 2}
    batch, _ = next(iter(read_split(dataset, "train", batch_size=8)))
    assert batch.shape == (4, 16, 16, 3)


def test_undecodable_images_are_all_listed(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "data")
    (root / "train/0red/broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    good = (root / "eval/1blue/000.jpg").read_bytes()
    (root / "eval/1blue/truncated.jpg").write_bytes(good[:40])
    with pytest.raises(UndecodableImageError) as raised:
        preprocess_dataset(str(root), str(tmp_path / "records"), image_size=16)
    message = str(raised.value)
    assert "2 image(s) cannot be decoded" in message
    assert "train/0red/broken.jpg" in message and "eval/1blue/truncated.jpg" in message


def test_read_split_without_records(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "data")
    dataset = preprocess_dataset(str(root), str(tmp_path / "records"), image_size=16)
    for shard in (tmp_path / "records").glob("eval-*"):
        shard.unlink()
    with pytest.raises(FileNotFoundError, match="no TFRecords"):
        read_split(dataset, "eval", batch_size=4)


def test_validation_is_carved_from_train_stratified_and_seeded() -> None:
    labelled = [(f"a/{i}.jpg", 0) for i in range(20)] + [(f"b/{i}.jpg", 1) for i in range(10)]

    train, validation = carve_validation(labelled, 0.1, seed=7)

    assert sorted(train + validation) == sorted(labelled)
    assert [label for _, label in validation].count(0) == 2
    assert [label for _, label in validation].count(1) == 1
    assert carve_validation(list(reversed(labelled)), 0.1, seed=7) == (train, validation)
    assert carve_validation(labelled, 0.1, seed=8)[1] != validation
    assert carve_validation(labelled, 0.0, seed=7)[1] == []


def test_small_classes_keep_training_images(tmp_path: Path) -> None:
    _, validation = carve_validation([("a/0.jpg", 0), ("a/1.jpg", 0), ("b/0.jpg", 1)], 0.5, 1)
    assert validation == [("a/0.jpg", 0)] or validation == [("a/1.jpg", 0)]
    with pytest.raises(ValueError, match=r"validation_fraction must be in \[0, 1\)"):
        carve_validation([("a/0.jpg", 0)], 1.0, 1)


def test_preprocess_writes_a_val_split_and_leaves_eval_alone(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "data", {"0red": 10, "1blue": 5})
    dataset = preprocess_dataset(
        str(root), str(tmp_path / "records"), image_size=16, validation_fraction=0.2
    )

    assert dataset.counts == {
        "train": {"0red": 8, "1blue": 4},
        "eval": {"0red": 10, "1blue": 5},
        "val": {"0red": 2, "1blue": 1},
    }
    assert load_preprocessed(str(tmp_path / "records")) == dataset
    labels = np.concatenate([labels.numpy() for _, labels in read_split(dataset, "val", 8)])
    assert sorted(labels.tolist()) == [0, 0, 1]


def _all_of(dataset: records.PreprocessedDataset, split: str, **options) -> tuple:
    batches = list(read_split(dataset, split, batch_size=4, **options))
    return (
        np.concatenate([images.numpy() for images, _ in batches]),
        np.concatenate([labels.numpy() for _, labels in batches]),
    )


def test_encoded_records_give_the_pixels_of_pixel_records_and_are_smaller(
    tmp_path: Path,
) -> None:
    root = make_layout(tmp_path / "data", {"0red": 3, "1blue": 3})
    encoded = preprocess_dataset(str(root), str(tmp_path / "encoded"), image_size=40)
    pixels = preprocess_dataset(
        str(root), str(tmp_path / "pixels"), image_size=40, encoding=records.PIXELS
    )

    assert load_preprocessed(str(tmp_path / "pixels")).encoding == records.PIXELS
    encoded_images, encoded_labels = _all_of(encoded, "train")
    pixel_images, pixel_labels = _all_of(pixels, "train")
    np.testing.assert_array_equal(encoded_images, pixel_images)
    np.testing.assert_array_equal(encoded_labels, pixel_labels)

    def size(folder: str) -> int:
        return sum(path.stat().st_size for path in (tmp_path / folder).glob("*.tfrecord"))

    assert size("encoded") < size("pixels") / 2


def test_training_shuffle_is_bounded_yet_reorders_every_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A split larger than the buffer: every image once per pass, in a new order each pass."""
    root = make_layout(tmp_path / "data", {"0red": 12, "1blue": 12})
    dataset = preprocess_dataset(str(root), str(tmp_path / "r"), 8, images_per_shard=4)
    monkeypatch.setattr(records, "SHUFFLE_BUFFER", 3)
    in_order, _ = _all_of(dataset, "train")
    passes = read_split(dataset, "train", batch_size=24, shuffle=True, seed=1, repeat=True)
    first, second = (images.numpy() for images, _ in passes.take(2))

    def keys(images: np.ndarray) -> list[bytes]:
        return sorted(image.tobytes() for image in images)

    assert keys(first) == keys(second) == keys(in_order)
    assert not np.array_equal(first, second) and not np.array_equal(first, in_order)


@pytest.mark.slow
def test_beam_direct_runner_writes_the_same_records(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "data", {"0red": 5, "1blue": 4})
    here = preprocess_dataset(str(root), str(tmp_path / "here"), 16, images_per_shard=3)
    beam = preprocess_dataset(
        str(root), str(tmp_path / "beam"), 16, images_per_shard=3, beam_args="--runner=DirectRunner"
    )

    assert beam.counts == here.counts
    names = sorted(path.name for path in (tmp_path / "here").iterdir())
    assert sorted(path.name for path in (tmp_path / "beam").iterdir()) == names
    for name in names:
        assert (tmp_path / "beam" / name).read_bytes() == (tmp_path / "here" / name).read_bytes()
