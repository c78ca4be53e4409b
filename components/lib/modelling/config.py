"""The training parameters and their defaults: the one place where they are written
(``pipeline/pipeline.py``'s signature reads them). Light: no TensorFlow, so that compiling the
pipeline and starting a CLI do not load it."""

from __future__ import annotations

from dataclasses import dataclass

from components.lib.data.options import SEED
from components.lib.modelling.variants import DEFAULT_BACKBONE


@dataclass(frozen=True)
class TrainingConfig:
    """Hyperparameters of one training run (the pipeline's train parameters)."""

    backbone: str = DEFAULT_BACKBONE
    epochs: int = 10
    learning_rate: float = 0.01
    fine_tune_epochs: int = 10
    fine_tune_learning_rate: float = 3e-4
    fine_tune_from_block: int = 4
    batch_size: int = 32
    dropout: float = 0.2
    label_smoothing: float = 0.1
    brightness_contrast: float = 0.2
    early_stopping_patience: int = 3
    imbalance_ratio: float = 1.5
    seed: int = SEED


@dataclass(frozen=True)
class ExportOptions:
    """What the train step writes besides the serving SavedModel (the pipeline's export
    parameters); not training settings, so the checkpoints and tuning trials ignore them."""

    export_tflite: bool = False
