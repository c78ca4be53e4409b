"""The study: the training parameters that tuning searches, their ranges, the metric it
maximises, how trials are chosen and how the best one is picked. Declared once here and read by
both ways of tuning: serialised for the Vertex AI tuning job (``vertex_parameter_specs``,
``metric_spec``) and sampled by the local search (``sample``).

Free of TensorFlow and of the Vertex AI SDK at import, as ``variants.py`` is, so that the
pipeline definition (compiled without them) reads the study from here.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from typing import Any

from components.lib.modelling.variants import OFFLINE_BACKBONES

GCS = "gs://"
OFF, VERTEX, LOCAL = "off", "vertex", "local"
"""How a run tunes: not at all, with a Vertex AI tuning job, or with the search in one step."""


@dataclass(frozen=True)
class TuningOptions:
    """How much a run tunes (the pipeline parameter ``tuning_trials``): 0, not at all."""

    trials: int = 0


@dataclass(frozen=True)
class DoubleRange:
    """A float between ``low`` and ``high``, sampled uniformly on a log scale when ``log``."""

    name: str
    low: float
    high: float
    log: bool = False

    def sample(self, rng: random.Random) -> float:
        if self.log:
            return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return rng.uniform(self.low, self.high)

    def parse(self, value: Any) -> float:
        return float(value)

    def vertex_spec(self) -> Any:
        from google.cloud.aiplatform import hyperparameter_tuning as hpt

        scale = "log" if self.log else "linear"
        return hpt.DoubleParameterSpec(min=self.low, max=self.high, scale=scale)


@dataclass(frozen=True)
class IntegerRange:
    """An integer from ``low`` to ``high`` inclusive."""

    name: str
    low: int
    high: int

    def sample(self, rng: random.Random) -> int:
        return rng.randint(self.low, self.high)

    def parse(self, value: Any) -> int:
        # Vertex AI passes integers as numbers, which a JSON or protobuf reader may make floats.
        return int(float(value))

    def vertex_spec(self) -> Any:
        from google.cloud.aiplatform import hyperparameter_tuning as hpt

        return hpt.IntegerParameterSpec(min=self.low, max=self.high, scale="linear")


@dataclass(frozen=True)
class Choice:
    """One of ``values`` (strings)."""

    name: str
    values: tuple[str, ...]

    def sample(self, rng: random.Random) -> str:
        return rng.choice(self.values)

    def parse(self, value: Any) -> str:
        if str(value) not in self.values:
            raise ValueError(f"{self.name} must be one of {', '.join(self.values)}, got {value!r}")
        return str(value)

    def vertex_spec(self) -> Any:
        from google.cloud.aiplatform import hyperparameter_tuning as hpt

        return hpt.CategoricalParameterSpec(values=list(self.values))


Parameter = DoubleRange | IntegerRange | Choice


@dataclass(frozen=True)
class Trial:
    """One trial's record, the same from either way of tuning: its parameters, the metric it
    reached (None when it failed), how long it took, and its final state."""

    trial: str
    parameters: dict[str, Any]
    metric: float | None
    seconds: float
    state: str = "SUCCEEDED"


@dataclass(frozen=True)
class Study:
    """What tuning searches and for what. The parameters are named as the train step's, so a
    trial's parameters are the train step's arguments as they are."""

    parameters: tuple[Parameter, ...]
    metric: str
    goal: str
    algorithm: str
    parallel_trials: int

    def sample(self, rng: random.Random) -> dict[str, Any]:
        """One trial's parameters, drawn at random from the ranges (the ``RANDOM_SEARCH``
        algorithm), in the order the parameters are declared."""
        return {parameter.name: parameter.sample(rng) for parameter in self.parameters}

    def parse(self, values: dict[str, Any]) -> dict[str, Any]:
        """A trial's parameters as given by Vertex AI (strings or numbers), typed."""
        missing = [p.name for p in self.parameters if p.name not in values]
        if missing:
            raise ValueError(f"a trial needs the parameters {', '.join(missing)}")
        return {p.name: p.parse(values[p.name]) for p in self.parameters}

    def chosen(self, training_config: dict[str, Any]) -> dict[str, Any]:
        """The values of the study's parameters in a model's training configuration: what
        tuning chose for it, or what was given (a run summary says which), typed (a whole number
        comes back from an artifact's metadata as a float)."""
        return {
            parameter.name: parameter.parse(training_config[parameter.name])
            for parameter in self.parameters
            if parameter.name in training_config
        }

    def vertex_parameter_specs(self) -> dict[str, Any]:
        """The parameters as the Vertex AI SDK's specs, for google-cloud-pipeline-components'
        ``serialize_parameters``."""
        return {parameter.name: parameter.vertex_spec() for parameter in self.parameters}

    def metric_spec(self) -> dict[str, str]:
        """The metric and its goal, for ``serialize_metrics``."""
        return {self.metric: self.goal}

    def best(self, trials: list[Trial]) -> Trial:
        """The trial with the best metric; between equals, the earliest (lowest trial id), as
        ``max`` over the trials in order picks. Raises ValueError when no trial finished."""
        finished = [trial for trial in trials if trial.metric is not None]
        if not finished:
            states = ", ".join(f"trial {t.trial}: {t.state}" for t in trials) or "no trials"
            raise ValueError(f"no trial reported {self.metric} ({states})")
        sign = 1.0 if self.goal == "maximize" else -1.0
        ordered = sorted(finished, key=lambda trial: _trial_order(trial.trial))
        return max(ordered, key=lambda trial: sign * trial.metric)

    def parallel(self, trials: int) -> int:
        """Trials that run at once on Vertex AI for a budget of ``trials``."""
        return max(1, min(trials, self.parallel_trials))


def described(parameters: dict[str, Any]) -> str:
    """``name=value, ...`` with floats to 3 significant digits."""
    return ", ".join(
        f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}"
        for name, value in parameters.items()
    )


def trials_table(trials: list[Trial], study: Study) -> str:
    """The trials as a Markdown table, the best one marked: what the step logs and what the
    README shows."""
    best = study.best(trials).trial if any(t.metric is not None for t in trials) else None
    names = [parameter.name for parameter in study.parameters]
    lines = [
        "| trial | " + " | ".join(names) + f" | {study.metric} | seconds |",
        "| --- " * (len(names) + 3) + "|",
    ]
    for trial in trials:
        values = [trial.parameters.get(name) for name in names]
        cells = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in values]
        metric = f"{trial.metric:.4f}" if trial.metric is not None else trial.state
        marker = " (best)" if trial.trial == best else ""
        lines.append(
            f"| {trial.trial}{marker} | "
            + " | ".join(cells)
            + f" | {metric} | {trial.seconds:.0f} |"
        )
    return "\n".join(lines)


def trials_record(trials: list[Trial], study: Study) -> dict[str, Any]:
    """Every trial and which was best: what the tuning steps keep in their artifact's
    metadata, whichever way the study ran."""
    return {
        "metric": study.metric,
        "best": study.best(trials).trial,
        "trials": [dataclasses.asdict(trial) for trial in trials],
    }


def _trial_order(trial: str) -> tuple[int, str]:
    return (int(trial), trial) if trial.isdigit() else (0, trial)


STUDY = Study(
    parameters=(
        DoubleRange("learning_rate", 1e-3, 1e-1, log=True),
        DoubleRange("fine_tune_learning_rate", 1e-5, 1e-3, log=True),
        IntegerRange("fine_tune_from_block", 4, 16),
        Choice("backbone", OFFLINE_BACKBONES),
    ),
    metric="val_accuracy",
    goal="maximize",
    # Random search both on Vertex AI and locally: the same study, not two algorithms. Vertex
    # AI's default ("ALGORITHM_UNSPECIFIED", Bayesian optimisation) pays off from some tens of
    # trials, and then only with few of them in parallel.
    algorithm="RANDOM_SEARCH",
    parallel_trials=2,
)
"""The study of this pipeline: the head's and fine-tuning's learning rates, the first
fine-tuned block (16: Lite0's head convolution only, Lite1's and Lite2's last five blocks) and
the backbone; validation accuracy maximised."""


def tuning_mode(trials: int, pipeline_root: str) -> str:
    """How a run with a budget of ``trials`` tunes: ``OFF`` for 0; ``VERTEX`` (a Vertex AI
    tuning job) when the pipeline root is in Cloud Storage, where the job's trials, each on
    its own machine, can read the data; otherwise ``LOCAL`` (the search in one step)."""
    if trials < 0:
        raise ValueError(f"tuning_trials must be 0 (no tuning) or more, got {trials}")
    if trials == 0:
        return OFF
    return VERTEX if pipeline_root.startswith(GCS) else LOCAL
