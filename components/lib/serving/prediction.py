"""Load an exported SavedModel and call its serving signature, as Vertex's TF container does."""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from components.lib.serving.contract import (
    CLASS_NAMES_FILE,
    OUTPUT_CLASSES,
    OUTPUT_PROBABILITIES,
    SERVING_INPUT,
    SIGNATURE_NAME,
)
from components.lib.storage import local_copy


class InvalidImageError(ValueError):
    """Some instances are not decodable images; ``indices`` says which ones."""

    def __init__(self, indices: list[int]) -> None:
        super().__init__(f"instance(s) {indices} are not decodable JPEG/PNG/BMP/GIF images")
        self.indices = indices


@dataclass(frozen=True)
class Predictions:
    classes: np.ndarray
    probabilities: np.ndarray


class ServingModel:
    """The serving signature of one exported model, plus its class names."""

    def __init__(self, model_uri: str) -> None:
        """``model_uri``: the model's folder, local or ``gs://`` (read through the storage seam)."""
        self.model_dir = local_copy(model_uri)
        self._signature = tf.saved_model.load(self.model_dir).signatures[SIGNATURE_NAME]
        with open(os.path.join(self.model_dir, CLASS_NAMES_FILE)) as file:
            self.class_names: list[str] = json.load(file)

    def _call(self, images: list[bytes]) -> Predictions:
        outputs = self._signature(**{SERVING_INPUT: tf.constant(images, dtype=tf.string)})
        return Predictions(
            classes=outputs[OUTPUT_CLASSES].numpy(),
            probabilities=outputs[OUTPUT_PROBABILITIES].numpy(),
        )

    def predict(self, images: list[bytes]) -> Predictions:
        """Predict a batch of encoded images; raises InvalidImageError naming the bad ones."""
        try:
            return self._call(images)
        except tf.errors.InvalidArgumentError:
            bad = [index for index, image in enumerate(images) if not _decodes(image)]
            if not bad:
                raise
            raise InvalidImageError(bad) from None


def _decodes(image: bytes) -> bool:
    try:
        tf.io.decode_image(image, channels=3, expand_animations=False)
    except tf.errors.InvalidArgumentError:
        return False
    return True


class BadRequestError(ValueError):
    """A prediction request that does not follow Vertex's format; the message says what is wrong."""


def decode_instances(body: bytes, max_instances: int) -> list[bytes]:
    """Image bytes of a Vertex request ``{"instances": [{"bytes": {"b64": "..."}}, ...]}``.

    Like TF Serving, an instance may also be ``{"b64": "..."}``, since the signature has one input.
    More than ``max_instances`` instances are refused rather than batched into one huge call.
    """
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadRequestError(f"the request body is not JSON: {error}") from None
    if not isinstance(request, dict) or "instances" not in request:
        raise BadRequestError('the request needs an "instances" list: {"instances": [...]}')
    instances = request["instances"]
    if not isinstance(instances, list) or not instances:
        raise BadRequestError('"instances" must be a non-empty list')
    if len(instances) > max_instances:
        raise BadRequestError(
            f"{len(instances)} instances in one request; the limit is {max_instances}: "
            "split the request"
        )
    return [instance_bytes(index, instance) for index, instance in enumerate(instances)]


def instance_bytes(index: int, instance: object) -> bytes:
    """The image bytes of one instance; ``index`` names it in the error."""
    encoded = instance.get(SERVING_INPUT, instance) if isinstance(instance, dict) else None
    if not isinstance(encoded, dict) or not isinstance(encoded.get("b64"), str):
        raise BadRequestError(
            f'instance {index} must be {{"{SERVING_INPUT}": {{"b64": "<base64 image>"}}}}'
        )
    try:
        return base64.b64decode(encoded["b64"], validate=True)
    except binascii.Error:
        raise BadRequestError(f"instance {index}: the b64 value is not valid base64") from None
