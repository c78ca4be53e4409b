"""What every trial of a study shares (``TrialSettings``), apart from the trial itself: the
tuning job's spec is written from it in the light image, which has no TensorFlow."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from components.lib.modelling.config import TrainingConfig
from components.lib.tuning.study import STUDY


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a study shares: the training parameters that are not tuned (the
    train step's, by name), the image size (0: each backbone's native size) and the share of
    training images held out for validation."""

    training: dict[str, Any]
    image_size: int = 0
    validation_fraction: float = 0.1

    def __post_init__(self) -> None:
        fields = {field.name for field in dataclasses.fields(TrainingConfig)}
        unknown = set(self.training) - fields
        if unknown:
            raise ValueError(f"unknown training parameters: {', '.join(sorted(unknown))}")
        if self.validation_fraction <= 0:
            raise ValueError(
                "tuning measures every trial on the validation split: validation_fraction must "
                f"be above 0, got {self.validation_fraction}"
            )

    @classmethod
    def from_step_arguments(cls, arguments: Mapping[str, Any]) -> TrialSettings:
        """The settings among a tuning step's arguments (its ``locals()`` on entry), by name.

        A step declares the train step's parameters that tuning leaves alone, the image size
        and the validation share in its signature (a KFP step's inputs are its signature);
        this reads them from there, so that no step lists them a second time."""
        tuned = {parameter.name for parameter in STUDY.parameters}
        training = [f.name for f in dataclasses.fields(TrainingConfig) if f.name not in tuned]
        missing = [
            name
            for name in [*training, "image_size", "validation_fraction"]
            if name not in arguments
        ]
        if missing:
            raise TypeError(f"a tuning step must take the parameters {', '.join(missing)}")
        return cls(
            training={name: arguments[name] for name in training},
            image_size=arguments["image_size"],
            validation_fraction=arguments["validation_fraction"],
        )

    @property
    def seed(self) -> int:
        """The seed of the validation split, as of training."""
        return int(self.training.get("seed", TrainingConfig.seed))

    def config(self, parameters: dict[str, Any]) -> TrainingConfig:
        """The training configuration of a trial: these settings with its parameters."""
        return TrainingConfig(**{**self.training, **parameters})
