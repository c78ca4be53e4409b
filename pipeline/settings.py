"""The settings of the CLIs that reach Google Cloud: flags, then ``IMAGE_CLASSIFIER_<NAME>``, then
the config file (YAML, ``~/.config/image-classifier/vertex.yaml`` or ``--config`` /
``IMAGE_CLASSIFIER_CONFIG``). ``pipeline.run`` and ``pipeline.predict`` read them the same way."""

from __future__ import annotations

import argparse
import datetime
import os
import re
from typing import TYPE_CHECKING, Any

import yaml

from components.images import ImageError

if TYPE_CHECKING:
    from pipeline.submit import VertexSettings


ENV_PREFIX = "IMAGE_CLASSIFIER_"
DEFAULT_CONFIG = "~/.config/image-classifier/vertex.yaml"
SETTINGS = {
    "project": "Google Cloud project (required)",
    "region": "Vertex AI region, e.g. europe-west4 (required)",
    "pipeline_root": "gs:// folder for the steps' outputs (required)",
    "image": "the steps' GPU image, as docker/build.sh pushed it (build.sh --print-uri); the "
    "cpu, light and serving images are named beside it (REPO/NAME-cpu:TAG, ...) unless given "
    "(required to submit, schedule or publish a fresh compile)",
    "cpu_image": "the cpu image of a fresh compile, when not the one beside --image",
    "light_image": "the light image of a fresh compile, when not the one beside --image",
    "serving_image": "the serving image of a fresh compile (serving_image's default), when not "
    "the one beside --image",
    "service_account": "service account the job runs as",
    "network": "VPC network to peer with, projects/NUMBER/global/networks/NAME",
    "experiment": "Vertex AI experiment to record the run in (with --local: its parameters and "
    "final metrics; --target local keeps them under the state folder)",
    "api_endpoint": "Vertex AI API host[:port] (default REGION-aiplatform.googleapis.com), "
    "e.g. a Private Service Connect endpoint",
}
REQUIRED_SETTINGS = ("project", "region", "pipeline_root", "image")
EXPERIMENT_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")
LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")


class UsageError(Exception):
    """A mistake in the command line; printed as one line, no traceback."""


def run_id() -> str:
    """Time of the run, and the process, so that runs started together keep separate logs."""
    return f"{datetime.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}"


def read_config(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        return {}
    with open(path) as file:
        config = yaml.safe_load(file) or {}
    if not isinstance(config, dict):
        raise UsageError(f"config file {path} must be a YAML mapping of settings")
    unknown = set(config) - {*SETTINGS, "labels"}
    if unknown:
        raise UsageError(
            f"config file {path}: unknown keys {sorted(unknown)}; known: "
            f"{', '.join([*SETTINGS, 'labels'])}"
        )
    return config


def _labels(assignments: list[str], configured: dict[str, Any]) -> dict[str, str]:
    labels = {str(k): str(v) for k, v in configured.items()}
    for assignment in assignments:
        key, separator, value = assignment.partition("=")
        if not separator:
            raise UsageError(f"--labels {assignment!r} is not KEY=VALUE")
        labels[key] = value
    for key, value in labels.items():
        if not (LABEL_KEY.fullmatch(key) and LABEL_VALUE.fullmatch(value)):
            raise UsageError(
                f"label {key}={value!r}: keys and values take lowercase letters, digits, _ and -,"
                " at most 63 characters, and keys start with a letter"
            )
    return labels


def read_settings(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Every setting of ``SETTINGS`` (None where none is given): the flag of that name in
    ``args``, else ``IMAGE_CLASSIFIER_<NAME>``, else the config file; with the config file's
    content and its path (``--config``, ``IMAGE_CLASSIFIER_CONFIG`` or the default)."""
    path = getattr(args, "config", None) or os.environ.get(f"{ENV_PREFIX}CONFIG", DEFAULT_CONFIG)
    config = read_config(os.path.expanduser(path))
    values = {
        name: getattr(args, name, None)
        or os.environ.get(f"{ENV_PREFIX}{name.upper()}")
        or config.get(name)
        or None
        for name in SETTINGS
    }
    return values, config, path


def vertex_settings(
    args: argparse.Namespace, required: tuple[str, ...] = REQUIRED_SETTINGS
) -> VertexSettings:
    """Settings from flags, then ``IMAGE_CLASSIFIER_<NAME>``, then the config file.

    Everything wrong is reported at once, in one UsageError: every missing one of ``required``,
    a region Vertex AI does not have, a pipeline root outside Cloud Storage, an image that is
    still the placeholder, a malformed experiment name or label. Nothing here uses the network.
    """
    from pipeline.submit import VertexSettings, check_region

    values, config, path = read_settings(args)
    missing = [name for name in required if not values[name]]
    problems = []
    if missing:
        problems.append(
            f"missing setting{'s' if len(missing) > 1 else ''} "
            + ", ".join(
                f"{name} (--{name.replace('_', '-')}, {ENV_PREFIX}{name.upper()} or {name!r} in "
                f"{path})"
                for name in missing
            )
        )
    if values["image"]:
        try:
            VertexSettings(**values).images.refuse_placeholders(
                "build and push the images (bash docker/build.sh --project PROJECT --region "
                f"REGION) and pass the GPU image's URI with --image, {ENV_PREFIX}IMAGE or "
                f"'image' in {path}"
            )
        except ImageError as error:
            problems.append(f"image: {error}")
    if values["region"] and (problem := check_region(values["region"])):
        problems.append(problem)
    if values["pipeline_root"] and not values["pipeline_root"].startswith("gs://"):
        problems.append(
            f"pipeline_root {values['pipeline_root']!r} must be a gs:// folder (Vertex AI "
            "writes the step outputs there)"
        )
    if values["experiment"] and not EXPERIMENT_NAME.fullmatch(values["experiment"]):
        problems.append(
            f"experiment {values['experiment']!r}: lowercase letters, digits and dashes, "
            "starting with a letter or digit, at most 128 characters"
        )
    try:
        labels = _labels(getattr(args, "labels", []), config.get("labels") or {})
    except UsageError as error:
        problems.append(str(error))
    if problems:
        hint = "; or add --local to run on this machine" if missing else ""
        raise UsageError("; ".join(problems) + hint)
    return VertexSettings(**values, labels=labels)
