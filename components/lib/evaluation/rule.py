"""The deploy rule's settings and its exact wording: light (no TensorFlow), so that the upload
step can record the rule with a registered version without loading a model, and the infra
validation step can apply its serving budgets in the serving image."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Overrun:
    """A serving figure over its budget: which budget (``name``, and ``budget``: the
    parameter), by how much."""

    name: str
    budget: str
    what: str
    measured: float
    allowed: float
    unit: str

    def describe(self) -> str:
        return (
            f"the {self.name} budget: {self.what} {self.measured:g} {self.unit} > "
            f"{self.allowed:g} {self.unit} ({self.budget}), over by "
            f"{self.measured - self.allowed:.4g} {self.unit}"
        )


@dataclass(frozen=True)
class GateRule:
    """The deploy rule's settings (the pipeline parameters of the same names): the accuracy
    gate, and the serving budgets that infra validation's figures must keep."""

    min_accuracy: float = 0.8
    max_regression: float = 0.0
    allow_class_change: bool = False
    max_latency_p95_ms: float = 1000.0
    """p95 latency of a one-image request from one client, as the serving container answers."""
    max_model_size_mb: float = 100.0
    """The exported model's files, in MB (10^6 bytes)."""
    max_load_seconds: float = 300.0
    """From the server's start to its first healthy answer (TensorFlow and the model loading)."""

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> GateRule:
        """The rule whose fields ``dataclasses.asdict`` wrote (the evaluation summary's
        ``gate``; other keys, such as its wording, are left out)."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in settings.items() if name in names})

    def labels(self) -> dict[str, str]:
        """The rule's settings as registry labels (Vertex turns them into label values)."""
        return {
            "gate_min_accuracy": f"{self.min_accuracy:.4f}",
            "gate_max_regression": f"{self.max_regression:.4f}",
            "gate_allow_class_change": str(self.allow_class_change).lower(),
            "gate_test": "mcnemar-exact",
            "gate_max_latency_p95_ms": f"{self.max_latency_p95_ms:g}",
            "gate_max_model_size_mb": f"{self.max_model_size_mb:g}",
            "gate_max_load_seconds": f"{self.max_load_seconds:g}",
        }

    def describe(self) -> str:
        """The exact rule, as recorded with a registered version."""
        change = "replaced" if self.allow_class_change else "kept"
        return (
            f"deploy when accuracy >= {self.min_accuracy:.4f} and, against a served model with "
            "the same classes, the new model gets at least as many of the same eval photos right "
            f"as it, less {self.max_regression:.4f} x the number of photos (max_regression); the "
            "exact McNemar test of the difference is reported; a served model with other classes "
            f"is {change} (allow_class_change={str(self.allow_class_change).lower()}); and, "
            "served as Vertex AI serves it (infra validation), p95 latency of a one-image "
            f"request <= {self.max_latency_p95_ms:g} ms (max_latency_p95_ms), model size <= "
            f"{self.max_model_size_mb:g} MB (max_model_size_mb), healthy <= "
            f"{self.max_load_seconds:g} s after start (max_load_seconds)"
        )

    def overruns(
        self, latency_p95_ms: float, model_mb: float, load_seconds: float
    ) -> list[Overrun]:
        """The serving budgets that infra validation's figures exceed, none when all are kept."""
        checks = (
            Overrun(
                "latency",
                "max_latency_p95_ms",
                "p95 latency of a one-image request",
                latency_p95_ms,
                self.max_latency_p95_ms,
                "ms",
            ),
            Overrun(
                "model size",
                "max_model_size_mb",
                "model size",
                model_mb,
                self.max_model_size_mb,
                "MB",
            ),
            Overrun(
                "load time",
                "max_load_seconds",
                "time from start to healthy",
                load_seconds,
                self.max_load_seconds,
                "s",
            ),
        )
        return [check for check in checks if check.measured > check.allowed]
