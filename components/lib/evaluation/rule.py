"""The deploy rule's settings and its exact wording: light (no TensorFlow), so that the upload
step can record the rule with a registered version without loading a model."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GateRule:
    """The deploy rule's settings (the pipeline parameters of the same names)."""

    min_accuracy: float = 0.8
    max_regression: float = 0.0
    allow_class_change: bool = False

    def labels(self) -> dict[str, str]:
        """The rule's settings as registry labels (Vertex turns them into label values)."""
        return {
            "gate_min_accuracy": f"{self.min_accuracy:.4f}",
            "gate_max_regression": f"{self.max_regression:.4f}",
            "gate_allow_class_change": str(self.allow_class_change).lower(),
            "gate_test": "mcnemar-exact",
        }

    def describe(self) -> str:
        """The exact rule, as recorded with a registered version."""
        change = "replaced" if self.allow_class_change else "kept"
        return (
            f"deploy when accuracy >= {self.min_accuracy:.4f} and, against a served model with "
            "the same classes, the new model gets at least as many of the same eval photos right "
            f"as it, less {self.max_regression:.4f} x the number of photos (max_regression); the "
            "exact McNemar test of the difference is reported; a served model with other classes "
            f"is {change} (allow_class_change={str(self.allow_class_change).lower()})"
        )
