"""Load and call an exported SavedModel exactly the way TensorFlow Serving does.

TF Serving (what Vertex AI's prebuilt TensorFlow prediction images run) loads a SavedModel with
the C++ ``LoadSavedModel`` behind a TF1 session: it imports the graph, runs the restore op and
the init op, then feeds each request to the ``serving_default`` signature's tensor *names*.
``tf.saved_model.load`` is a different path (it rebinds variables through the object graph) and
can serve a model that TF Serving cannot. This module takes TF Serving's path, so a test or an
emulated endpoint finds out what Vertex AI would.

It imports TensorFlow, NumPy and the serving contract only (no training code, no cloud SDKs), so
it also runs in a bare ``tensorflow`` environment of another version:
``python -m components.lib.serving.tf_serving MODEL_DIR IMAGE...`` prints the predictions as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

from components.lib.serving.contract import (
    OUTPUT_CLASSES,
    OUTPUT_PROBABILITIES,
    SERVING_INPUT,
    SIGNATURE_NAME,
)

SERVE_TAG = "serve"


class TFServingError(RuntimeError):
    """TF Serving's loader could not load the model, or could not answer a request with it."""


class TFServingModel:
    """A SavedModel loaded into its own TF1 graph and session, as TF Serving holds it.

    Call it with encoded images; it returns ``(classes, probabilities)`` as NumPy arrays.
    """

    def __init__(self, model_dir: str) -> None:
        self.model_dir = model_dir
        self._graph = tf.compat.v1.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph)
        try:
            with self._graph.as_default():
                meta_graph = tf.compat.v1.saved_model.loader.load(
                    self._session, [SERVE_TAG], model_dir
                )
        except (tf.errors.OpError, OSError, RuntimeError, ValueError) as error:
            self.close()
            raise TFServingError(
                f"TF Serving's loader cannot load {model_dir}: {_first_line(error)}"
            ) from error
        signature = meta_graph.signature_def.get(SIGNATURE_NAME)
        if signature is None or SERVING_INPUT not in signature.inputs:
            self.close()
            raise TFServingError(
                f"{model_dir} has no {SIGNATURE_NAME!r} signature with an input "
                f"{SERVING_INPUT!r}: it cannot answer Vertex AI's requests"
            )
        missing = {OUTPUT_CLASSES, OUTPUT_PROBABILITIES} - set(signature.outputs)
        if missing:
            self.close()
            raise TFServingError(
                f"the {SIGNATURE_NAME!r} signature of {model_dir} lacks the output(s) "
                f"{sorted(missing)}"
            )
        self._input = signature.inputs[SERVING_INPUT].name
        self._outputs = [
            signature.outputs[OUTPUT_CLASSES].name,
            signature.outputs[OUTPUT_PROBABILITIES].name,
        ]

    def __call__(self, images: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Predict a batch of encoded images, one ``Session.run`` as TF Serving makes it."""
        try:
            classes, probabilities = self._session.run(
                self._outputs, feed_dict={self._input: np.asarray(images, dtype=object)}
            )
        except tf.errors.OpError as error:
            raise TFServingError(
                f"TF Serving's session cannot run {self.model_dir}: {_first_line(error)}"
            ) from error
        return classes, probabilities

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> TFServingModel:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def load_like_tf_serving(model_dir: str) -> TFServingModel:
    """Load ``model_dir`` (a local SavedModel folder) through TF Serving's session loader;
    raises TFServingError when it cannot be loaded or lacks the serving contract."""
    return TFServingModel(model_dir)


def _first_line(error: BaseException) -> str:
    """The line of a TensorFlow error that says what went wrong (not "Graph execution error:")."""
    message = getattr(error, "message", None) or str(error)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    lines = [line for line in lines if line != "Graph execution error:"] or [""]
    return f"{type(error).__name__}: {lines[0]}"


def main(argv: list[str]) -> int:
    """``MODEL_DIR IMAGE...`` -> one JSON object on stdout: the TF version and the predictions."""
    if len(argv) < 2:
        print(
            "usage: python -m components.lib.serving.tf_serving MODEL_DIR IMAGE...", file=sys.stderr
        )
        return 2
    model_dir, *image_paths = argv
    try:
        with load_like_tf_serving(model_dir) as model:
            classes, probabilities = model([Path(path).read_bytes() for path in image_paths])
    except TFServingError as error:
        print(error, file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "tensorflow": tf.__version__,
                OUTPUT_CLASSES: classes.tolist(),
                OUTPUT_PROBABILITIES: probabilities.tolist(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
