"""The evaluation file kept with a model version: its name and its reader.

Apart from the metrics (which need TensorFlow to score a model), so that the upload step, which
only reads the file, runs in the light image.
"""

from __future__ import annotations

import json
import os
from typing import Any

EVALUATION_FILE = "evaluation.json"


def read_model_evaluation(directory: str) -> dict[str, Any]:
    """What ``model_evaluation.write_model_evaluation`` wrote in ``directory``."""
    with open(os.path.join(directory, EVALUATION_FILE)) as file:
        return json.load(file)
