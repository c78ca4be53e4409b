"""The data steps' settings and their defaults: the one place where the defaults of the download,
validate and preprocess parameters are written (``pipeline/pipeline.py``'s signature, the library
functions and the CLIs read them from here). Light: no TensorFlow, so that compiling the pipeline
and starting a CLI do not load it."""

from __future__ import annotations

from dataclasses import dataclass

SEED = 42
"""The pipeline's ``seed``: the carved eval split, the validation split, shuffling, initialisation
and augmentation all follow it."""


@dataclass(frozen=True)
class SourceOptions:
    """How ``data_uri`` is read: the eval split carved when it has none, and a label CSV's
    columns (the pipeline parameters ``eval_fraction``, ``seed``, ``csv_*``)."""

    eval_fraction: float = 0.2
    seed: int = SEED
    file_column: str = "file"
    label_column: str = "label"
    image_folder: str = ""


@dataclass(frozen=True)
class ValidationOptions:
    """What the validate step accepts: images smaller than ``min_image_size`` on a side are
    skipped; more than ``max_unusable_share`` of the files unusable fails the run."""

    min_image_size: int = 32
    max_unusable_share: float = 0.05


@dataclass(frozen=True)
class PreprocessOptions:
    """How the preprocess and features steps prepare the images: resized to ``image_size`` (0:
    the backbone's native size), ``validation_fraction`` of each class's training images held
    out for early stopping, the work done in the step or on Apache Beam
    (``beam_pipeline_args``)."""

    image_size: int = 0
    validation_fraction: float = 0.1
    beam_pipeline_args: str = ""
