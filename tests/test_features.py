"""Backbone features computed once: what the features step writes and how training reads it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from components.lib.data.records import preprocess_dataset
from components.lib.modelling.features import check_features, extract_features, read_features


def test_features_of_train_and_val_match_their_labels(demo_data_dir: Path, tmp_path: Path) -> None:
    dataset = preprocess_dataset(
        str(demo_data_dir), str(tmp_path / "records"), image_size=64, validation_fraction=0.25
    )
    counts = extract_features(dataset, str(tmp_path / "features"))

    assert counts == {"train": 48, "val": 16}
    batches = list(read_features(str(tmp_path / "features"), "val", batch_size=5))
    features = np.concatenate([batch[0] for batch in batches])
    labels = np.concatenate([batch[1] for batch in batches])
    assert features.shape == (16, 1280) and features.dtype == np.float32
    assert np.bincount(labels).tolist() == [4, 4, 4, 4]
    assert np.all(features >= 0) and features.std() > 0  # pooled ReLU6 activations, not zeros
    check_features(str(tmp_path / "features"), 64, "efficientnet-lite0")
    with pytest.raises(ValueError, match="at 64 px, but training uses efficientnet-lite0 at 96"):
        check_features(str(tmp_path / "features"), 96, "efficientnet-lite0")
    with pytest.raises(
        ValueError,
        match="come from efficientnet-lite0 at 64 px, but training uses efficientnet-lite1 at 64",
    ):
        check_features(str(tmp_path / "features"), 64, "efficientnet-lite1")
    with pytest.raises(FileNotFoundError, match=r"no TFRecords.*run the features step first"):
        read_features(str(tmp_path / "features"), "eval", batch_size=5)
