"""The pipeline's arguments from the command line (``--param NAME=VALUE``, ``--data-uri``,
``--min-accuracy``), typed by the compiled pipeline's own parameters and checked before
anything runs, locally or on Vertex AI."""

from __future__ import annotations

import argparse
from typing import Any

from components.lib.parameters import parameter_problems
from components.lib.targets.base import SERVING_PARAMETERS, Serving
from pipeline.settings import UsageError

_PARAMETER_TYPES = {
    "STRING": str,
    "NUMBER_INTEGER": int,
    "NUMBER_DOUBLE": float,
    "BOOLEAN": lambda text: {"true": True, "false": False}[text.lower()],
}
_PARAMETER_KINDS = {
    "NUMBER_INTEGER": "a whole number, e.g. 5",
    "NUMBER_DOUBLE": "a number, e.g. 0.5",
    "BOOLEAN": "true or false",
    "STRING": "text",
}
"""How a parameter type of the compiled pipeline is named to a person."""


def pipeline_parameters(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The compiled pipeline's parameters: name -> {parameterType, defaultValue, description}."""
    return spec["root"]["inputDefinitions"]["parameters"]


def parse_params(assignments: list[str], parameters: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Parse ``name=value`` pairs, typed by the pipeline's own parameter types."""
    values: dict[str, Any] = {}
    for assignment in assignments:
        name, separator, text = assignment.partition("=")
        if not separator:
            raise UsageError(f"--param {assignment!r} is not NAME=VALUE")
        if name not in parameters:
            raise UsageError(
                f"--param {name!r} is not a pipeline parameter; known: "
                f"{', '.join(sorted(parameters))}"
            )
        kind = parameters[name]["parameterType"]
        try:
            values[name] = _PARAMETER_TYPES[kind](text)
        except (KeyError, ValueError):
            expected = _PARAMETER_KINDS.get(kind, kind.lower())
            raise UsageError(f"--param {name}={text!r}: expected {expected}") from None
    if problems := parameter_problems(values):
        raise UsageError("; ".join(f"--param {problem}" for problem in problems))
    return values


def pipeline_arguments(
    args: argparse.Namespace, parameters: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Pipeline arguments from --param, --data-uri and --min-accuracy."""
    arguments = parse_params(getattr(args, "param", []), parameters)
    if getattr(args, "data_uri", None):
        arguments["data_uri"] = args.data_uri
    if getattr(args, "min_accuracy", None) is not None:
        arguments["min_accuracy"] = args.min_accuracy
    _check_serving(arguments, parameters)
    return arguments


def check_values(parameters: dict[str, dict[str, Any]], arguments: dict[str, Any]) -> None:
    """UsageError listing every argument (or default) outside its allowed values, before
    anything runs; the pipeline's first step checks the same for runs no CLI started."""
    values = {name: spec.get("defaultValue") for name, spec in parameters.items()}
    values.update(arguments)
    if problems := parameter_problems(values):
        raise UsageError("; ".join(problems))


def _check_serving(arguments: dict[str, Any], parameters: dict[str, dict[str, Any]]) -> None:
    """Serving settings that the deploy step would refuse, refused before anything runs."""
    values = {
        name: arguments.get(name, spec.get("defaultValue", ""))
        for name, spec in parameters.items()
        if name in SERVING_PARAMETERS
    }
    for name in values:  # KFP compiles an integer default as 1.0
        if parameters[name]["parameterType"] == "NUMBER_INTEGER":
            values[name] = int(values[name])
    try:
        Serving.from_parameters(values)
    except ValueError as error:
        raise UsageError(f"serving settings: {error}") from None
