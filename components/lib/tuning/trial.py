"""One trial of the study: train with the trial's parameters, measure validation accuracy.

``TrialData`` prepares what the trials of one study share, once: the records of the validated
images (they hold each image's own bytes, so one set serves every backbone's input size) and,
the first time a trial asks for a backbone, that backbone's features, on which the head trains
in seconds. A trial then trains as the train step does (``train_classifier``: the head on the
features, then fine-tuning on the images) and is measured on the validation split, never on
eval, which stays for the gate.

``python -m components.lib.tuning.trial`` is a Vertex AI tuning job's trial: Vertex AI appends
the trial's parameters as ``--name=value``, and the trial reports its metric with
``cloudml-hypertune``, which the job reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from typing import Any

import keras
import tensorflow as tf

from components.lib.data.records import (
    VALIDATION,
    PreprocessedDataset,
    preprocess_dataset,
    read_split,
)
from components.lib.modelling.features import extract_features
from components.lib.modelling.model import train_classifier
from components.lib.modelling.variants import DEFAULT_BACKBONE, input_size
from components.lib.tuning.settings import TrialSettings
from components.lib.tuning.study import STUDY, Study, Trial

logger = logging.getLogger(__name__)


class TrialData:
    """The records of the images under ``raw_data`` (validated, challenge layout; a folder or
    ``gs://``) in ``work_dir``, with the validation split carved as the preprocess step carves
    it, and each backbone's features once asked for. ``seconds`` says what preparing took."""

    def __init__(self, raw_data: str, work_dir: str, settings: TrialSettings) -> None:
        self.work_dir = work_dir
        self.image_size = settings.image_size
        start = time.monotonic()
        self.records = preprocess_dataset(
            raw_data,
            os.path.join(work_dir, "records"),
            input_size(DEFAULT_BACKBONE, settings.image_size),
            seed=settings.seed,
            validation_fraction=settings.validation_fraction,
        )
        self.seconds = {"records": time.monotonic() - start}

    def for_backbone(self, backbone: str) -> tuple[PreprocessedDataset, str]:
        """The records read at ``backbone``'s input size, and its features' folder."""
        dataset = dataclasses.replace(
            self.records, image_size=input_size(backbone, self.image_size)
        )
        features = os.path.join(self.work_dir, f"features-{backbone}-{dataset.image_size}")
        if not os.path.isdir(features):
            start = time.monotonic()
            extract_features(dataset, features, backbone=backbone)
            self.seconds[f"features {backbone}"] = time.monotonic() - start
        return dataset, features


def validation_accuracy(model: keras.Model, dataset: PreprocessedDataset, batch_size: int) -> float:
    """Share of the validation split that ``model`` classifies right."""
    hits = total = 0
    for images, labels in read_split(dataset, VALIDATION, batch_size):
        probabilities = model(tf.cast(images, tf.float32), training=False)
        predicted = tf.argmax(probabilities, axis=-1, output_type=labels.dtype)
        hits += int(tf.reduce_sum(tf.cast(predicted == labels, tf.int32)))
        total += int(tf.size(labels))
    return hits / total


def run_trial(
    data: TrialData, settings: TrialSettings, parameters: dict[str, Any], trial: str
) -> Trial:
    """Train with ``parameters`` over ``settings`` and measure; ``seconds`` counts training and
    measuring, not preparing the data (``TrialData.seconds``)."""
    config = settings.config(parameters)
    dataset, features = data.for_backbone(config.backbone)
    start = time.monotonic()
    trained = train_classifier(dataset, config, features)
    accuracy = validation_accuracy(trained.model, dataset, config.batch_size)
    return Trial(trial, parameters, accuracy, round(time.monotonic() - start, 1))


def _arguments(argv: list[str] | None, study: Study) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m components.lib.tuning.trial",
        description="One trial of a Vertex AI hyperparameter tuning job: train with the "
        "trial's parameters and report the validation accuracy.",
    )
    parser.add_argument("--raw-data", required=True, help="the validated images (gs:// folder)")
    parser.add_argument("--settings", required=True, help="TrialSettings' fields, as JSON")
    for parameter in study.parameters:
        parser.add_argument(f"--{parameter.name}", required=True, help="set by Vertex AI")
    return parser.parse_args(argv)


def metric_reporter() -> Any:
    """cloudml-hypertune's reporter, its file (``CLOUD_ML_HP_METRIC_FILE``) known to be
    writable before the trial trains, not after: trials run as uid 1000, and a folder only root
    may write (GoogleCloudPlatform/cloudml-hypertune#6) would lose the trial's whole training.
    Exits with one line naming the file when it is not writable."""
    import hypertune

    path = os.environ.get("CLOUD_ML_HP_METRIC_FILE", hypertune.hypertune._DEFAULT_METRIC_PATH)
    try:
        reporter = hypertune.HyperTune()  # creates the file's folder
        with open(reporter.metric_path, "a"):
            pass
    except OSError as error:
        raise SystemExit(
            f"error: the trial cannot write its metric file {path} (CLOUD_ML_HP_METRIC_FILE) as "
            f"uid {os.getuid()}: {error.strerror or error}; the image must let its user create "
            "and write that folder"
        ) from None
    return reporter


def main(argv: list[str] | None = None, study: Study = STUDY) -> int:
    """Run the trial Vertex AI asked for and report its metric to the tuning job."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _arguments(argv, study)
    reporter = metric_reporter()
    settings = TrialSettings(**json.loads(args.settings))
    parameters = study.parse({p.name: getattr(args, p.name) for p in study.parameters})
    trial_id = os.environ.get("CLOUD_ML_TRIAL_ID", "0")
    with tempfile.TemporaryDirectory(prefix="trial-") as work_dir:
        data = TrialData(args.raw_data, work_dir, settings)
        result = run_trial(data, settings, parameters, trial_id)
    logger.info(
        "trial %s: %s = %.4f in %.0f s (%s)",
        trial_id,
        study.metric,
        result.metric,
        result.seconds,
        ", ".join(f"{name}={value}" for name, value in parameters.items()),
    )
    reporter.report_hyperparameter_tuning_metric(
        hyperparameter_metric_tag=study.metric, metric_value=result.metric
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
