"""The backbone seam: a second family (``keras.applications``' MobileNetV3Small) is built,
trained and fine-tuned through the same calls as EfficientNet-Lite. Its ImageNet weights are
downloaded by Keras (the network), so here it is built with random weights: nothing downloads."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from components.lib.modelling.backbones import build_backbone, description
from components.lib.modelling.model import build_classifier, unfreeze_top
from components.lib.modelling.variants import (
    BACKBONES,
    OFFLINE_BACKBONES,
    KerasApplication,
    get_variant,
)

MOBILENET = "mobilenet-v3-small"


@pytest.fixture(scope="module")
def network() -> keras.Model:
    return build_backbone(MOBILENET, (96, 96, 3), weights=None)


def test_the_family_is_one_row_of_the_table_and_needs_the_network_for_weights() -> None:
    spec = get_variant(MOBILENET)
    assert isinstance(spec, KerasApplication)
    assert (spec.native_image_size, spec.num_blocks, spec.keras_name) == (
        224,
        11,
        "mobilenet_v3_small",
    )
    assert not spec.packaged_weights and "needs the network" in spec.weights_source
    assert MOBILENET in BACKBONES and MOBILENET not in OFFLINE_BACKBONES
    assert all(get_variant(name).packaged_weights for name in OFFLINE_BACKBONES)


def test_raw_pixels_in_pooled_features_out(network: keras.Model) -> None:
    assert network.name == "mobilenet_v3_small" and description(network) is BACKBONES[MOBILENET]
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 96, 96, 3)).astype("float32")
    features = network(pixels, training=False).numpy()
    assert features.shape == (2, 576) and np.isfinite(features).all()
    # the network rescales pixels itself: the same call answers the same
    np.testing.assert_allclose(network(pixels, training=False).numpy(), features, rtol=1e-5)


def test_fine_tuning_unfreezes_its_top_blocks_and_head_without_batch_norm(
    network: keras.Model,
) -> None:
    spec = get_variant(MOBILENET)
    unfreeze_top(network, 9)
    trainable = {spec.block_of(layer.name) for layer in network.layers if layer.trainable_weights}
    assert trainable == {9, 10, 11}
    assert not any(
        layer.trainable
        for layer in network.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )
    unfreeze_top(network, 0)
    assert {spec.block_of(layer.name) for layer in network.layers if layer.trainable_weights} == (
        set(range(12))
    )
    with pytest.raises(ValueError, match=r"must be in \[0, 11\] \(mobilenet_v3_small has"):
        unfreeze_top(network, 12)


def test_the_classifier_takes_it_as_it_takes_efficientnet_lite() -> None:
    classifier = build_classifier(3, 96, 0.2, weights=None, backbone=MOBILENET)
    assert classifier.get_layer("mobilenet_v3_small").name == "mobilenet_v3_small"
    probabilities = classifier(np.zeros((1, 96, 96, 3), "float32"), training=False).numpy()
    assert probabilities.shape == (1, 3)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
