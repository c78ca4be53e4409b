"""What a model version carries for drift tests: ``monitoring/reference.npz`` beside its
SavedModel.

- ``embeddings``: a fixed-size, seeded, class-stratified sample of the backbone embeddings of
  the training photos (float16: half the bytes, far more precision than the test needs), with
  ``labels``; the per-class means and counts summarise them.
- ``confidences`` and ``classes``: the top probability and predicted class of every validation
  photo (the train split's where there is no validation split).

Training writes it (``modelling.reference``); the server, the monitor CLI and the pipeline read
it with ``load_reference``, through the storage seam (a folder or ``gs://``).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass

import numpy as np

from components.lib.storage import filesystem

REFERENCE_FILE = os.path.join("monitoring", "reference.npz")
REFERENCE_SIZE = 200
"""Embeddings kept at most: enough for the permutation test's power on a shift, small enough
that a test (a pooled kernel matrix) takes well under a second."""


@dataclass(frozen=True)
class Reference:
    class_names: list[str]
    embeddings: np.ndarray  # (n, d)
    labels: np.ndarray  # (n,) class index of each embedding's photo
    confidences: np.ndarray  # (v,) top probability on validation photos
    classes: np.ndarray  # (v,) predicted class on validation photos

    def class_statistics(self) -> list[dict[str, float | int | str]]:
        """Per class: photos in the sample and the spread of their embeddings about their mean."""
        rows = []
        for index, name in enumerate(self.class_names):
            members = self.embeddings[self.labels == index].astype(np.float64)
            spread = (
                float(np.linalg.norm(members - members.mean(0), axis=1).mean())
                if len(members)
                else 0.0
            )
            rows.append({"class": name, "count": len(members), "spread": spread})
        return rows


def sample_indices(labels: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """At most ``size`` indices of ``labels``, each class in proportion, sorted; seeded."""
    labels = np.asarray(labels)
    if len(labels) <= size:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        take = max(1, round(size * len(members) / len(labels)))
        chosen.append(rng.choice(members, min(take, len(members)), replace=False))
    picked = np.concatenate(chosen)
    return np.sort(rng.choice(picked, min(size, len(picked)), replace=False))


def reference_of(
    class_names: list[str],
    embeddings: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    size: int = REFERENCE_SIZE,
    seed: int = 0,
) -> Reference:
    """The reference from a model's outputs: a class-stratified sample of ``size`` of the
    training photos' ``embeddings`` (with their ``labels``), and the top probability and class of
    each row of ``probabilities`` (held-out photos, as served)."""
    keep = sample_indices(labels, size, seed)
    probabilities = np.asarray(probabilities)
    return Reference(
        class_names=list(class_names),
        embeddings=np.asarray(embeddings, np.float32)[keep],
        labels=np.asarray(labels)[keep],
        confidences=probabilities.max(axis=1),
        classes=probabilities.argmax(axis=1),
    )


def write_reference(model_dir: str, reference: Reference) -> str:
    """Write ``reference`` under ``model_dir`` (a folder or ``gs://``); returns the file's URI."""
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        class_names=np.array(json.dumps(reference.class_names)),
        embeddings=reference.embeddings.astype(np.float16),
        labels=reference.labels.astype(np.int32),
        confidences=reference.confidences.astype(np.float32),
        classes=reference.classes.astype(np.int32),
    )
    uri = f"{model_dir.rstrip('/')}/{REFERENCE_FILE}"
    fs, path = filesystem(uri)
    fs.makedirs(os.path.dirname(path), exist_ok=True)
    with fs.open(path, "wb") as file:
        file.write(buffer.getvalue())
    return uri


class NoReferenceError(FileNotFoundError):
    """The model version was exported without a monitoring reference."""


def load_reference(model_dir: str) -> Reference:
    """The reference stored with the model at ``model_dir``; NoReferenceError if it has none."""
    uri = f"{model_dir.rstrip('/')}/{REFERENCE_FILE}"
    fs, path = filesystem(uri)
    if not fs.exists(path):
        raise NoReferenceError(
            f"{uri} does not exist: the model was exported without a monitoring reference "
            "(retrain it with this version)"
        )
    with fs.open(path, "rb") as file:
        stored = np.load(io.BytesIO(file.read()))
        return Reference(
            class_names=json.loads(str(stored["class_names"])),
            embeddings=stored["embeddings"].astype(np.float32),
            labels=stored["labels"],
            confidences=stored["confidences"],
            classes=stored["classes"],
        )
