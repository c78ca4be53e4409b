"""Load an exported SavedModel and call its serving signature, as Vertex's TF container does."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from components.lib.serving.contract import (
    CLASS_NAMES_FILE,
    MONITORING_SIGNATURE,
    OUTPUT_CLASSES,
    OUTPUT_EMBEDDINGS,
    OUTPUT_PROBABILITIES,
    SERVING_INPUT,
    SIGNATURE_NAME,
)
from components.lib.serving.protocol import InvalidImageError
from components.lib.storage import local_copy


@dataclass(frozen=True)
class Predictions:
    classes: np.ndarray
    probabilities: np.ndarray
    embeddings: np.ndarray | None = None  # with_embeddings, from a model that has them


class ServingModel:
    """The serving signature of one exported model, plus its class names.

    With ``with_embeddings`` it calls the monitoring signature instead where the export has one
    (the same predictions, and the embeddings, in one pass), for the drift monitor.
    """

    def __init__(self, model_uri: str, with_embeddings: bool = False) -> None:
        """``model_uri``: the model's folder, local or ``gs://`` (read through the storage seam)."""
        self.model_uri = model_uri
        self.model_dir = local_copy(model_uri)
        signatures = tf.saved_model.load(self.model_dir).signatures
        self.has_embeddings = with_embeddings and MONITORING_SIGNATURE in signatures
        self._signature = signatures[
            MONITORING_SIGNATURE if self.has_embeddings else SIGNATURE_NAME
        ]
        with open(os.path.join(self.model_dir, CLASS_NAMES_FILE)) as file:
            self.class_names: list[str] = json.load(file)
        self.fingerprint = model_fingerprint(self.model_dir)

    def _call(self, images: list[bytes]) -> Predictions:
        outputs = self._signature(**{SERVING_INPUT: tf.constant(images, dtype=tf.string)})
        return Predictions(
            classes=outputs[OUTPUT_CLASSES].numpy(),
            probabilities=outputs[OUTPUT_PROBABILITIES].numpy(),
            embeddings=outputs[OUTPUT_EMBEDDINGS].numpy() if self.has_embeddings else None,
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


def model_fingerprint(model_dir: str) -> str:
    """12 hex digits of SHA-256 over the graph and the variables' index: which export answers,
    where no registry version is known (a serving container)."""
    digest = hashlib.sha256()
    for name in ("saved_model.pb", os.path.join("variables", "variables.index")):
        path = os.path.join(model_dir, name)
        if os.path.exists(path):
            with open(path, "rb") as file:
                digest.update(file.read())
    return digest.hexdigest()[:12]
