"""The builder of the ``keras.applications`` family (MobileNetV3Small; its description,
``KerasApplication``, is in ``variants.py``, free of TensorFlow).

Their ImageNet weights are not packaged: Keras downloads them from storage.googleapis.com the
first time a backbone is built with ``weights="imagenet"`` (into ``~/.keras/models``). A step on
Vertex AI has the network and does so; an offline machine cannot, and builds these backbones
with ``weights=None`` only (random weights: what the tests check, the architecture and its
fine-tuning blocks).
"""

from __future__ import annotations

import keras

from components.lib.modelling.variants import KerasApplication


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
