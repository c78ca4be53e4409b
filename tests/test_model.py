"""The training recipe: which backbone layers fine-tune, class weights, reproducible training."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from components.lib.modelling.backbone import build_efficientnet_lite
from components.lib.modelling.model import (
    TrainingConfig,
    class_weights,
    export_serving_model,
    train_classifier,
    unfreeze_top,
)


@pytest.fixture(scope="module")
def backbone() -> keras.Model:
    return build_efficientnet_lite("efficientnet-lite0", (32, 32, 3), weights=None)


def trainable_prefixes(backbone: keras.Model) -> set[str]:
    return {layer.name.split("_")[0] for layer in backbone.layers if layer.trainable_weights}


def test_fine_tuning_trains_only_the_top_blocks_without_batch_norm(backbone: keras.Model) -> None:
    count = unfreeze_top(backbone, 14)
    assert trainable_prefixes(backbone) == {"block14", "block15", "head"}
    assert count == 7  # expand, depthwise and project convolutions of two blocks, and head
    assert not any(
        layer.trainable
        for layer in backbone.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )
    unfreeze_top(backbone, 0)
    assert trainable_prefixes(backbone) == {"stem", "head"} | {f"block{i}" for i in range(16)}


def test_fine_tune_block_out_of_range_is_refused(backbone: keras.Model) -> None:
    with pytest.raises(ValueError, match=r"fine_tune_from_block must be in \[0, 16\]"):
        unfreeze_top(backbone, 17)


def test_fine_tuning_counts_the_blocks_of_a_deeper_backbone() -> None:
    lite2 = build_efficientnet_lite("efficientnet-lite2", (32, 32, 3), weights=None)
    unfreeze_top(lite2, 20)
    assert trainable_prefixes(lite2) == {"block20", "head"}
    with pytest.raises(ValueError, match=r"must be in \[0, 21\] \(efficientnet_lite2 has"):
        unfreeze_top(lite2, 22)


def test_class_weights_only_when_imbalanced() -> None:
    assert class_weights({"a": 87, "b": 67, "c": 92}, imbalance_ratio=1.5) is None
    weights = class_weights({"a": 100, "b": 25}, imbalance_ratio=1.5)
    assert weights == pytest.approx({0: 125 / 200, 1: 125 / 50})
    assert class_weights({"a": 10, "b": 10}, imbalance_ratio=0.5) == {0: 1.0, 1: 1.0}


@pytest.mark.slow
def test_same_seed_and_data_train_the_same_model(demo_data_dir: Path, tmp_path: Path) -> None:
    """Reproducible on CPU: both phases, validation split, early stopping and augmentation."""
    from components.lib.data.records import preprocess_dataset
    from components.lib.evaluation.metrics import evaluate_saved_model

    dataset = preprocess_dataset(
        str(demo_data_dir), str(tmp_path / "records"), image_size=64, validation_fraction=0.125
    )
    config = TrainingConfig(epochs=2, fine_tune_epochs=1, fine_tune_from_block=14)
    results = []
    for run in ("first", "second"):
        trained = train_classifier(dataset, config)
        export_serving_model(
            trained.model,
            dataset.class_names,
            64,
            str(tmp_path / run),
            trained.temperature,
            trained.calibration,
        )
        results.append((trained, evaluate_saved_model(str(tmp_path / run), str(demo_data_dir))))

    (first_trained, first), (second_trained, second) = results
    first_history = first_trained.history
    assert set(first_history) >= {"head_val_loss", "fine_tune_loss", "fine_tune_val_accuracy"}
    assert first_history == second_trained.history
    assert first_trained.calibration == second_trained.calibration
    assert first_trained.calibration["val_images"] == 8
    assert (
        first.temperature == first_trained.temperature == first_trained.calibration["temperature"]
    )
    assert first.calibration_decision == first_trained.calibration["decision"]
    assert first.confusion_matrix == second.confusion_matrix
    assert first.accuracy == second.accuracy
    np.testing.assert_array_equal(np.asarray(first.confusion_matrix).sum(axis=1), [6, 6, 6, 6])


@pytest.mark.slow
def test_mixed_precision_trains_and_exports_a_float32_model(
    demo_data_dir: Path, tmp_path: Path
) -> None:
    """The GPU path (float16 compute, loss scaling) runs here on CPU when forced; the exported
    copy is float32 and the global dtype policy is restored."""
    from components.lib.data.records import preprocess_dataset
    from components.lib.serving.prediction import ServingModel

    dataset = preprocess_dataset(str(demo_data_dir), str(tmp_path / "records"), image_size=64)
    config = TrainingConfig(epochs=1, fine_tune_epochs=1, fine_tune_from_block=14)
    trained = train_classifier(dataset, config, mixed_precision=True)

    assert trained.mixed_precision and trained.replicas == 1 and trained.chief
    assert keras.config.dtype_policy().name == "float32"
    assert {weight.dtype for weight in trained.model.weights} == {"float32"}
    assert set(trained.history) >= {"head_loss", "fine_tune_loss"}
    assert all(np.isfinite(trained.history["fine_tune_loss"]))
    export_serving_model(trained.model, dataset.class_names, 64, str(tmp_path / "model"))
    images = sorted(demo_data_dir.glob("eval/*/*"))[:4]
    predictions = ServingModel(str(tmp_path / "model")).predict([p.read_bytes() for p in images])
    np.testing.assert_allclose(np.asarray(predictions.probabilities).sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_a_larger_backbone_trains_from_its_features_and_fine_tunes_its_own_top(
    demo_data_dir: Path, tmp_path: Path
) -> None:
    """Lite1 through the features step and both phases: of its blocks, only the last (20)
    moves from the ImageNet weights."""
    from components.lib.data.records import preprocess_dataset
    from components.lib.modelling.backbone import read_torch_legacy_state_dict
    from components.lib.modelling.features import check_features, extract_features
    from components.lib.modelling.variants import get_variant

    lite1 = get_variant("efficientnet-lite1")
    dataset = preprocess_dataset(
        str(demo_data_dir), str(tmp_path / "records"), image_size=64, validation_fraction=0.25
    )
    features_dir = str(tmp_path / "features")
    extract_features(dataset, features_dir, backbone=lite1.name)
    check_features(features_dir, 64, lite1.name)
    config = TrainingConfig(
        backbone=lite1.name, epochs=1, fine_tune_epochs=1, fine_tune_from_block=20
    )
    trained = train_classifier(dataset, config, features_dir)

    tuned = trained.model.get_layer(lite1.keras_name)
    imagenet = read_torch_legacy_state_dict(lite1.weights_path())
    for block, moved in ((19, False), (20, True)):
        before = imagenet[f"_blocks.{block}._project_conv.weight"][:, :, 0, 0].T
        after = tuned.get_layer(f"block{block}_project_conv").get_weights()[0][0, 0]
        assert (not np.array_equal(before, after)) == moved, block
