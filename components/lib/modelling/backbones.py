"""The backbone seam on the Keras side: build what a ``variants.Backbone`` describes.

The classifier (``model.py``) and the features step (``features.py``) build their backbone here
and fine-tuning asks its description which layers are which block, so none of them knows a
family. A family adds its description to ``variants.BACKBONES`` and its builder to
``BUILDERS``: ``KerasApplication`` and ``keras_applications.py`` are the example.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from components.lib.modelling.backbone import build_efficientnet_lite
from components.lib.modelling.keras_applications import build_keras_application
from components.lib.modelling.variants import (
    BACKBONES,
    Backbone,
    BackboneVariant,
    KerasApplication,
    get_variant,
)

Shape = tuple[int | None, int | None, int] | None


def _efficientnet_lite(spec: BackboneVariant, input_shape: Shape, weights: str | None):
    return build_efficientnet_lite(spec.name, input_shape, weights=weights)


BUILDERS: dict[type, Callable[..., keras.Model]] = {
    BackboneVariant: _efficientnet_lite,
    KerasApplication: build_keras_application,
}
"""Each family's builder: (description, input shape, weights) -> a Keras model named
``keras_name`` from RGB pixels in [0, 255] to pooled features."""


def build_backbone(
    name: str, input_shape: Shape = None, weights: str | None = "imagenet"
) -> keras.Model:
    """The backbone ``name`` (a key of ``BACKBONES``) without its ImageNet head, with ImageNet
    ``weights`` or random ones (None); ``input_shape`` None: its native size."""
    spec = get_variant(name)
    return BUILDERS[type(spec)](spec, input_shape, weights)


def description(network: keras.Model) -> Backbone:
    """The description of a backbone that ``build_backbone`` built (by its model's name)."""
    for spec in BACKBONES.values():
        if spec.keras_name == network.name:
            return spec
    raise ValueError(f"{network.name!r} is not a backbone of {', '.join(BACKBONES)}")
