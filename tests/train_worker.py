"""One training process running the train step's own code, as a Vertex AI worker would.

    python tests/train_worker.py SETTINGS_JSON

SETTINGS_JSON names ``dataset``, ``features``, ``pipeline_root``, ``model`` (output folder),
``metadata`` (where this process writes the model artifact's metadata) and ``config`` (the
train step's hyperparameters). The cluster comes from ``TF_CONFIG``, as on Vertex AI.
"""

import json
import logging
import sys

from kfp import dsl

from components.train import train_model


def main(settings_path: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    with open(settings_path) as file:
        settings = json.load(file)
    model = dsl.Model(uri=settings["model"])
    train_model.python_func(
        dataset=dsl.Dataset(uri=settings["dataset"]),
        features=dsl.Dataset(uri=settings["features"]),
        pipeline_root=settings["pipeline_root"],
        model=model,
        training_metrics=dsl.Metrics(uri=settings["model"] + "-metrics"),
        **settings["config"],
    )
    with open(settings["metadata"], "w") as file:
        json.dump(model.metadata, file)


if __name__ == "__main__":
    main(sys.argv[1])
