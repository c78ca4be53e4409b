"""One authority per default: the settings dataclasses.

The compiled pipeline's parameters (what the Vertex AI console shows, and what the manual's
generated parameter reference lists: tests/test_docs.py) and the steps' parameters must state the
defaults that the dataclasses hold, so that a literal edited in one place, or a new parameter with
a literal of its own, fails here.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.images import PLACEHOLDERS
from components.lib.data.options import (
    SEED,
    PreprocessOptions,
    SourceOptions,
    ValidationOptions,
)
from components.lib.evaluation.rule import GateRule
from components.lib.modelling.config import ExportOptions, TrainingConfig
from components.lib.targets.base import Registration, Serving
from components.lib.tuning.study import TuningOptions
from pipeline.pipeline import CHALLENGE_DATA_URI

ROOT = Path(__file__).resolve().parent.parent
SETTINGS: list[tuple[type, dict[str, str]]] = [
    # (the dataclass, {its field: the pipeline parameter} where the two names differ)
    (
        SourceOptions,
        {
            "file_column": "csv_file_column",
            "label_column": "csv_label_column",
            "image_folder": "csv_image_folder",
        },
    ),
    (ValidationOptions, {}),
    (PreprocessOptions, {}),
    (TrainingConfig, {}),
    (ExportOptions, {}),
    (GateRule, {}),
    (Registration, {}),
    (
        Serving,
        {
            "accelerator_type": "serving_accelerator_type",
            "accelerator_count": "serving_accelerator_count",
            "service_account": "serving_service_account",
        },
    ),
    (TuningOptions, {"trials": "tuning_trials"}),
]
CONSTANTS = {
    "data_uri": CHALLENGE_DATA_URI,
    "seed": SEED,
    "serving_image": PLACEHOLDERS.serving,  # the images built beside the steps' (compile time)
}
"""Defaults that are one constant rather than a dataclass field."""
CHANNEL = "pipelinechannel--"


def authorities() -> dict[str, Any]:
    """Every pipeline parameter's default, as the dataclass (or constant) that owns it says."""
    defaults = dict(CONSTANTS)
    for settings, renamed in SETTINGS:
        for field in dataclasses.fields(settings):
            name = renamed.get(field.name, field.name)
            if name in defaults and defaults[name] != field.default:
                raise AssertionError(f"{name}: {settings.__name__} disagrees with another owner")
            defaults[name] = field.default
    return defaults


def same(stated: Any, owned: Any) -> bool:
    """Whether a compiled (YAML: integers as floats) or written default is the owned one."""
    if isinstance(owned, (bool, str)):
        return stated == owned and type(stated) is type(owned)
    return isinstance(stated, (int, float)) and float(stated) == float(owned)


def step_inputs(spec: dict) -> list[tuple[str, str, str, dict]]:
    """``(step, input, pipeline parameter, its definition)`` for every step input that the
    pipeline feeds from one of its parameters, in every DAG (the gate's branches included)."""
    components = spec["components"]
    dags = [spec["root"]["dag"]] + [c["dag"] for c in components.values() if "dag" in c]
    found = []
    for dag in dags:
        for task in dag["tasks"].values():
            step = task["componentRef"]["name"]
            if "dag" in components[step]:
                continue
            definitions = components[step].get("inputDefinitions", {}).get("parameters", {})
            for name, binding in task.get("inputs", {}).get("parameters", {}).items():
                parameter = binding.get("componentInputParameter", "")
                if parameter:
                    source = parameter.removeprefix(CHANNEL)
                    found.append((step, name, source, definitions[name]))
    return found


def drift(spec: dict) -> list[str]:
    """Every default in the compiled ``spec`` that is not its owner's, and every pipeline
    parameter that no dataclass owns."""
    owned = authorities()
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    problems = [
        f"pipeline parameter {name}: no settings dataclass owns its default"
        for name in sorted(set(parameters) - set(owned))
    ]
    problems += [
        f"{name}: owned, but no pipeline parameter" for name in set(owned) - set(parameters)
    ]
    for name in sorted(set(parameters) & set(owned)):
        stated = parameters[name].get("defaultValue")
        if not same(stated, owned[name]):
            problems.append(f"pipeline parameter {name}: default {stated!r}, owner {owned[name]!r}")
    for step, name, source, definition in step_inputs(spec):
        if "defaultValue" in definition and not same(definition["defaultValue"], owned[source]):
            problems.append(
                f"step {step} input {name}: default {definition['defaultValue']!r}, owner "
                f"{owned[source]!r} (pipeline parameter {source})"
            )
    return problems


@pytest.fixture(scope="module")
def spec() -> dict:
    """The checked-in pipeline.yaml (test_pipeline_spec keeps it equal to a fresh compile)."""
    return yaml.safe_load((ROOT / "pipeline.yaml").read_text())


def test_compiled_defaults_are_the_dataclasses(spec: dict) -> None:
    assert drift(spec) == []


def test_a_changed_literal_or_an_unowned_parameter_is_caught(spec: dict) -> None:
    changed = copy.deepcopy(spec)
    parameters = changed["root"]["inputDefinitions"]["parameters"]
    parameters["epochs"]["defaultValue"] = 11.0
    parameters["new_knob"] = {"parameterType": "STRING", "defaultValue": "x"}
    train = changed["components"]["comp-train-model"]["inputDefinitions"]["parameters"]
    train["dropout"]["defaultValue"] = 0.5
    assert drift(changed) == [
        "pipeline parameter new_knob: no settings dataclass owns its default",
        "pipeline parameter epochs: default 11.0, owner 10",
        "step comp-train-model input dropout: default 0.5, owner 0.2 (pipeline parameter dropout)",
    ]


def test_steps_take_every_value_from_the_pipeline(spec: dict) -> None:
    """A step runs its function's source text in the container, where the dataclasses are not
    in scope, so a default of its own could only be a second, literal copy: steps declare none
    for what the pipeline passes them."""
    inputs = step_inputs(spec)
    assert {(step, name) for step, name, _, _ in inputs} >= {
        ("comp-train-model", "epochs"),
        ("comp-evaluate-model", "min_accuracy"),
        ("comp-deploy-model", "traffic_percentage"),  # inside the gate's branch
    }
    defaulted = [
        (step, name) for step, name, _, definition in inputs if "defaultValue" in definition
    ]
    assert defaulted == []
