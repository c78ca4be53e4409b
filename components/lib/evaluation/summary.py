"""The evaluation's result as the steps after evaluate read it: one typed object.

The evaluate step writes it, infra validation completes it (the serving figures and the final
decision), and the upload step and the run summary read it. Between steps it travels as the
steps' ``summary`` dict output (``to_dict``; KFP passes no None inside a dict, so what is not
known is left out) and is read back with ``from_dict``: no step picks keys out of the dict.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from components.lib.evaluation.rule import GateRule

SERVING = "serving"
"""The serving figures' key in the summary and in the registry's evaluation metadata."""


@dataclass(frozen=True)
class EvaluationSummary:
    """What evaluate found: the accuracy's 95% interval, the eval split and photos, the
    champion (``champion_status``, described in ``champion``), the paired test, calibration,
    the gate rule, the tuned parameters the model was trained with and its TFLite scores;
    infra validation adds the ``serving`` figures and the final ``decision``."""

    accuracy_ci95: tuple[float, float]
    correct: int
    eval_images: int
    eval_split: str
    champion_status: str
    champion: str
    eval_fingerprint: str
    gate: dict[str, Any]
    trained_with: dict[str, Any] = field(default_factory=dict)
    paired_test: dict[str, Any] | None = None
    temperature: float | None = None
    ece_before: float | None = None
    ece_after: float | None = None
    calibration: str | None = None
    tflite: list[dict[str, Any]] | None = None
    serving: dict[str, Any] | None = None
    decision: str | None = None

    @property
    def rule(self) -> GateRule:
        """The gate rule the decision was made by."""
        return GateRule.from_dict(self.gate)

    def to_dict(self) -> dict[str, Any]:
        """The step output: a plain dict without the fields that are not known."""
        values = dataclasses.asdict(self)
        values["accuracy_ci95"] = list(self.accuracy_ci95)
        return {name: value for name, value in values.items() if value is not None}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EvaluationSummary:
        """A step output read back; whole numbers come back as such (KFP passes them as floats)."""
        low, high = values["accuracy_ci95"]
        known = {item.name for item in dataclasses.fields(cls)}
        return cls(
            **{
                **{name: value for name, value in values.items() if name in known},
                "accuracy_ci95": (low, high),
                "correct": int(values["correct"]),
                "eval_images": int(values["eval_images"]),
            }
        )

    def completed(self, serving: dict[str, Any], decision: str) -> EvaluationSummary:
        """This summary with infra validation's serving figures and final decision."""
        return dataclasses.replace(self, serving=serving, decision=decision)
