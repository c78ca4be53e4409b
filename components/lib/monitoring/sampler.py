"""The server's bounded sample of what it is asked: request embeddings, confidences and
predicted classes, written to storage every so often for the monitor to compare.

Each window (``interval_s``) keeps a uniform reservoir sample (algorithm R) of at most
``capacity`` predictions, whatever the traffic; at the window's end it is written as one
``<UTC time>.npz`` under the destination (a folder or ``gs://``) and a new window starts. Only
the newest ``keep_windows`` files are kept, so memory and storage stay bounded. Request images
are stored only when the user opts in (``store_images``), then beside the window's file, also at
most ``capacity`` of them.
"""

from __future__ import annotations

import datetime
import io
import logging
import os
import threading
from dataclasses import dataclass

import numpy as np

from components.lib.storage import filesystem

logger = logging.getLogger(__name__)

MONITORING_URI_ENV = "IMAGE_CLASSIFIER_MONITORING_URI"
"""Set in the serving container's environment by the model's upload: the folder under which each
deployed model's samples go (``<folder>/<deployed model id>``)."""
SAMPLE_SUFFIX = ".npz"
IMAGES_SUFFIX = "-images"


@dataclass(frozen=True)
class SamplingSettings:
    """Where and how much the server samples; ``destination`` empty: no sampling."""

    destination: str = ""
    capacity: int = 256
    interval_s: float = 300.0
    keep_windows: int = 24
    store_images: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.capacity < 1 or self.interval_s <= 0 or self.keep_windows < 1:
            raise ValueError(
                "sampling needs a capacity >= 1, an interval above 0 s and keep_windows >= 1"
            )


NO_SAMPLING = SamplingSettings()


@dataclass(frozen=True)
class Sample:
    """Predictions on recent requests (or on a folder of photos): one row each."""

    embeddings: np.ndarray  # (m, d); (0, 0) when the model has no embedding output
    confidences: np.ndarray  # (m,)
    classes: np.ndarray  # (m,)

    @classmethod
    def of(cls, embeddings: np.ndarray | None, probabilities: np.ndarray) -> Sample:
        probabilities = np.asarray(probabilities, dtype=np.float32)
        return cls(
            embeddings=(
                np.zeros((0, 0), np.float32)
                if embeddings is None
                else np.asarray(embeddings, np.float32)
            ),
            confidences=probabilities.max(axis=1),
            classes=probabilities.argmax(axis=1).astype(np.int32),
        )


class RequestSampler:
    """A window's reservoir; ``observe`` from any thread, ``flush`` at the window's end."""

    def __init__(self, settings: SamplingSettings) -> None:
        self.settings = settings
        self._rng = np.random.default_rng(settings.seed)
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._seen = 0
        self._rows: list[tuple[np.ndarray | None, float, int]] = []
        self._images: list[bytes] = []

    def observe(
        self, embeddings: np.ndarray | None, probabilities: np.ndarray, images: list[bytes]
    ) -> None:
        """Offer one model call's predictions to the reservoir."""
        capacity = self.settings.capacity
        confidences = probabilities.max(axis=1)
        classes = probabilities.argmax(axis=1)
        with self._lock:
            for row in range(len(confidences)):
                self._seen += 1
                if len(self._rows) < capacity:
                    slot = len(self._rows)
                    self._rows.append(None)  # type: ignore[arg-type]
                    if self.settings.store_images:
                        self._images.append(b"")
                else:
                    slot = int(self._rng.integers(self._seen))
                    if slot >= capacity:
                        continue
                embedding = None if embeddings is None else np.array(embeddings[row], np.float16)
                self._rows[slot] = (embedding, float(confidences[row]), int(classes[row]))
                if self.settings.store_images:
                    self._images[slot] = images[row]

    @property
    def seen(self) -> int:
        """Predictions offered in this window."""
        return self._seen

    def flush(self, now: datetime.datetime | None = None) -> str | None:
        """Write the window's sample (if it has any) and start a new window; returns its URI."""
        with self._lock:
            rows, images, seen = self._rows, self._images, self._seen
            self._reset()
        if not rows:
            return None
        now = now or datetime.datetime.now(datetime.timezone.utc)
        stamp = now.strftime("%Y%m%dT%H%M%S.%fZ")
        embeddings = [row[0] for row in rows]
        buffer = io.BytesIO()
        np.savez(  # not compressed: float16 embeddings hardly shrink, and zlib costs CPU
            buffer,
            embeddings=(
                np.stack(embeddings) if embeddings[0] is not None else np.zeros((0, 0), np.float16)
            ),
            confidences=np.array([row[1] for row in rows], np.float32),
            classes=np.array([row[2] for row in rows], np.int32),
            seen=np.array(seen),
        )
        root = self.settings.destination.rstrip("/")
        fs, folder = filesystem(root)
        fs.makedirs(folder, exist_ok=True)
        with fs.open(f"{folder}/{stamp}{SAMPLE_SUFFIX}", "wb") as file:
            file.write(buffer.getvalue())
        for index, image in enumerate(images):
            extension = "png" if image.startswith(b"\x89PNG") else "jpg"
            fs.makedirs(f"{folder}/{stamp}{IMAGES_SUFFIX}", exist_ok=True)
            with fs.open(f"{folder}/{stamp}{IMAGES_SUFFIX}/{index:04d}.{extension}", "wb") as file:
                file.write(image)
        self._prune(fs, folder)
        logger.info("sampled %d of %d predictions to %s/%s", len(rows), seen, root, stamp)
        return f"{root}/{stamp}{SAMPLE_SUFFIX}"

    def _prune(self, fs, folder: str) -> None:
        windows = _windows(fs, folder)
        for old in windows[: -self.settings.keep_windows]:
            fs.rm(old)
            images = old[: -len(SAMPLE_SUFFIX)] + IMAGES_SUFFIX
            if fs.exists(images):
                fs.rm(images, recursive=True)


def _windows(fs, folder: str) -> list[str]:
    """The window files under ``folder``, oldest first (their names are UTC times)."""
    if not fs.exists(folder):
        return []
    return sorted(path for path in fs.ls(folder, detail=False) if path.endswith(SAMPLE_SUFFIX))


def read_recent(destination: str, max_size: int) -> tuple[Sample, int]:
    """The newest windows' samples under ``destination``, newest first, at most ``max_size``
    rows; with the number of windows read. An empty Sample when there are none."""
    fs, folder = filesystem(destination.rstrip("/"))
    parts: list[dict[str, np.ndarray]] = []
    total = 0
    for path in reversed(_windows(fs, folder)):
        if total >= max_size:
            break
        with fs.open(path, "rb") as file:
            stored = np.load(io.BytesIO(file.read()))
            part = {name: stored[name] for name in ("embeddings", "confidences", "classes")}
        keep = min(len(part["confidences"]), max_size - total)
        parts.append({name: values[:keep] for name, values in part.items()})
        total += keep
    if not parts:
        return Sample(np.zeros((0, 0), np.float32), np.zeros(0, np.float32), np.zeros(0)), 0
    with_embeddings = [part["embeddings"] for part in parts if part["embeddings"].size]
    embeddings = (
        np.concatenate(with_embeddings).astype(np.float32)
        if len(with_embeddings) == len(parts)
        else np.zeros((0, 0), np.float32)
    )
    return (
        Sample(
            embeddings,
            np.concatenate([part["confidences"] for part in parts]),
            np.concatenate([part["classes"] for part in parts]),
        ),
        len(parts),
    )


def sampling_destination(root: str, key: str) -> str:
    """Where a deployed version's windows go under a monitoring root (``key``: its deployed
    model id, or a model folder whose name stands for it)."""
    return f"{root.rstrip('/')}/{os.path.basename(key.rstrip('/')) or 'model'}"


def requests_root(artifact_uri: str) -> str:
    """The monitoring root of a model uploaded from ``artifact_uri`` on Vertex AI: ``requests/``
    beside the model's folder, in the pipeline's bucket (the copy Vertex AI serves from is
    read-only)."""
    return f"{artifact_uri.rstrip('/').rsplit('/', 1)[0]}/requests"
