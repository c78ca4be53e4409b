"""Score the TFLite models exported beside a SavedModel (``modelling.edge``) on the eval split.

Each photo is decoded and resized by the same function the SavedModel's graph runs, then given
to ``tf.lite.Interpreter`` as the model's input type asks (float pixels, or uint8 quantized by
the input's scale and zero point); quantized outputs are dequantized. So the accuracies differ
from the SavedModel's by the conversion alone, photo for photo.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from components.lib.data.images import decode_and_resize
from components.lib.evaluation.metrics import ClassMismatchError, Evaluation, eval_photos, scored
from components.lib.modelling.edge import EDGE_DIR, LABELS_FILE, EdgeModel, read_edge_models
from components.lib.storage import local_copy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EdgeScore:
    """One TFLite model and its evaluation on the eval split."""

    model: EdgeModel
    evaluation: Evaluation

    def to_dict(self, reference: Evaluation) -> dict:
        """The figures the summary, the metrics and the registry keep; ``accuracy_change`` is
        against the SavedModel's ``reference`` evaluation on the same photos."""
        return {
            "kind": self.model.kind,
            "file": self.model.file,
            "size_bytes": self.model.size_bytes,
            "accuracy": round(self.evaluation.accuracy, 4),
            "correct": self.evaluation.correct,
            "accuracy_change": round(self.evaluation.accuracy - reference.accuracy, 4),
        }


class EdgeInterpreter:
    """One TFLite model under ``tf.lite.Interpreter``: RGB uint8 pixels in, probabilities out."""

    def __init__(self, path: str) -> None:
        self._interpreter = tf.lite.Interpreter(model_path=path)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """The class probabilities of one ``(H, W, 3)`` uint8 image."""
        values = pixels[np.newaxis].astype(np.float32)
        dtype = self._input["dtype"]
        scale, zero_point = self._input["quantization"]
        if np.issubdtype(dtype, np.integer) and scale:
            limits = np.iinfo(dtype)
            values = np.clip(np.round(values / scale + zero_point), limits.min, limits.max)
        self._interpreter.set_tensor(self._input["index"], values.astype(dtype))
        self._interpreter.invoke()
        output = self._interpreter.get_tensor(self._output["index"])[0]
        scale, zero_point = self._output["quantization"]
        if np.issubdtype(output.dtype, np.integer) and scale:
            return (output.astype(np.float64) - zero_point) * scale
        return output.astype(np.float64)


def evaluate_edge_models(model_uri: str, data_dir: str, split: str = "eval") -> list[EdgeScore]:
    """Score every TFLite model exported with the model at ``model_uri`` (local or ``gs://``,
    through the storage seam) on ``data_dir/<split>``; none when it has no edge export."""
    model_dir = local_copy(model_uri)
    models = read_edge_models(model_dir)
    if not models:
        return []
    with open(os.path.join(model_dir, EDGE_DIR, LABELS_FILE)) as handle:
        model_classes = handle.read().splitlines()
    class_names, listed = eval_photos(data_dir, split)
    if class_names != model_classes:
        raise ClassMismatchError(model_classes, class_names, split)
    pixels = []
    for path, _ in listed:
        with open(path, "rb") as handle:
            pixels.append(decode_and_resize(tf.constant(handle.read()), models[0].image_size))
    scores = []
    for model in models:
        interpreter = EdgeInterpreter(os.path.join(model_dir, model.file))
        probabilities = np.stack([interpreter.probabilities(image.numpy()) for image in pixels])
        scores.append(EdgeScore(model, scored(class_names, listed, probabilities)))
        logger.info(
            "edge model %s (%.2f MB): %s accuracy %.4f on %d images",
            model.file,
            model.size_bytes / 1e6,
            split,
            scores[-1].evaluation.accuracy,
            scores[-1].evaluation.count,
        )
    return scores
