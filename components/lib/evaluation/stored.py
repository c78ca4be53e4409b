"""The evaluation file kept with a model version: its name, its reader and writer, and the
per-photo results beside it.

Apart from the metrics (which need TensorFlow to score a model), so that the upload step, which
only reads the file, runs in the light image, and infra validation, which completes it, in the
serving image.
"""

from __future__ import annotations

import json
import os
from typing import Any

EVALUATION_FILE = "evaluation.json"
ROWS_FILE = "predictions.jsonl"


def read_model_evaluation(directory: str) -> dict[str, Any]:
    """What ``model_evaluation.write_model_evaluation`` wrote in ``directory``."""
    with open(os.path.join(directory, EVALUATION_FILE)) as file:
        return json.load(file)


def write_record(directory: str, record: dict[str, Any]) -> None:
    """Write ``record`` as the evaluation of the artifact at ``directory``."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, EVALUATION_FILE), "w") as file:
        json.dump(record, file, indent=1)


def read_rows(directory: str) -> list[dict[str, Any]]:
    """The per-photo results beside the record: photo (relative to the data), true class index
    (``label``) and the probabilities served."""
    with open(os.path.join(directory, ROWS_FILE)) as file:
        return [json.loads(line) for line in file if line.strip()]
