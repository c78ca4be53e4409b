"""A second backbone family: the networks of ``keras.applications`` (MobileNetV3Small here).

Their ImageNet weights are not packaged: Keras downloads them from storage.googleapis.com the
first time a backbone is built with ``weights="imagenet"`` (into ``~/.keras/models``). A step on
Vertex AI has the network and does so; an offline machine cannot, and builds these backbones
with ``weights=None`` only (random weights: what the tests check, the architecture and its
fine-tuning blocks). The description is free of TensorFlow (the pipeline's table of backbones,
``variants.BACKBONES``, lists it); ``build_keras_application`` imports Keras when it runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

_BLOCK = re.compile(r"expanded_conv_(?:(\d+)_)?")


@dataclass(frozen=True)
class KerasApplication:
    """A ``keras.applications`` network as a backbone: ``application`` names its constructor,
    ``num_blocks`` its inverted-residual blocks (layers ``expanded_conv_<i>_*``, the first one
    unnumbered), between the stem convolution (``conv``, block 0) and the head convolution
    (``conv_1``, block ``num_blocks``). Pixels in [0, 255] go in: the network rescales them
    itself (``include_preprocessing``)."""

    name: str
    application: str
    native_image_size: int
    num_blocks: int
    weights_source: str = (
        "downloaded by Keras from storage.googleapis.com when built (needs the network)"
    )
    packaged_weights: bool = False

    @property
    def keras_name(self) -> str:
        """Name of the Keras backbone model (a layer of the classifier)."""
        return self.name.replace("-", "_")

    def block_of(self, layer_name: str) -> int:
        """Block number of a layer: the stem counts as 0, the head convolution as
        ``num_blocks``, layers outside both (rescaling, activations, pooling) as -1."""
        if match := _BLOCK.match(layer_name):
            return int(match.group(1) or 0)
        if layer_name in ("conv", "conv_bn"):
            return 0
        if layer_name in ("conv_1", "conv_1_bn"):
            return self.num_blocks
        return -1


def build_keras_application(
    spec: KerasApplication,
    input_shape: tuple[int | None, int | None, int] | None = None,
    weights: str | None = "imagenet",
) -> keras.Model:
    """``spec``'s network without its ImageNet head: globally average-pooled features of RGB
    pixels in [0, 255], as a model named ``spec.keras_name``. ``weights="imagenet"`` downloads
    them (the network is needed); ``None`` keeps random ones."""
    import keras

    if weights not in ("imagenet", None):
        raise ValueError(f"weights must be 'imagenet' or None, got {weights!r}")
    side = spec.native_image_size
    network = getattr(keras.applications, spec.application)(
        input_shape=input_shape or (side, side, 3),
        include_top=False,
        weights=weights,
        pooling="avg",
        include_preprocessing=True,
    )
    return keras.Model(network.input, network.output, name=spec.keras_name)
