"""Compiled pipelines as files and templates: ``python -m pipeline.run publish`` (the compiled
pipeline as a template in Artifact Registry), ``--template`` and ``--pipeline-file`` read back,
and their images checked."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

import yaml

from components.images import is_placeholder
from pipeline.compile import compile_pipeline
from pipeline.settings import ENV_PREFIX, UsageError, vertex_settings


def read_spec(path: str) -> dict[str, Any]:
    with open(path) as file:
        return yaml.safe_load(file)


def refuse_placeholder_images(spec: dict[str, Any], source: str) -> None:
    """A compiled pipeline whose steps run the placeholder image fails to pull on Vertex AI."""
    placeholders = sorted({image for image in spec_images(spec) if is_placeholder(image)})
    if placeholders:
        raise UsageError(
            f"{source} runs the placeholder image {placeholders[0]}, which no registry "
            "holds: compile it with --image URI (python -m pipeline.compile --image URI ...)"
        )


def spec_images(spec: dict[str, Any]) -> list[str]:
    """The container images of a compiled pipeline: its steps' and its serving image's default."""
    executors = spec.get("deploymentSpec", {}).get("executors", {})
    images = [e["container"]["image"] for e in executors.values() if "container" in e]
    parameters = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    serving = parameters.get("serving_image", {}).get("defaultValue")
    return [*images, serving] if serving else images


def published_template(text: str) -> tuple[str, dict[str, Any]]:
    """The template path (pinned to a digest) and the spec of ``--template``."""
    from pipeline.templates import TemplateError, download_template, parse_template, pinned_template

    try:
        template = parse_template(text)
    except TemplateError as error:
        raise UsageError(str(error)) from None
    pinned = pinned_template(template)
    print(f"template       {pinned.uri}", file=sys.stderr)
    return pinned.uri, download_template(pinned)


def publish(args: argparse.Namespace) -> int:
    """``python -m pipeline.run publish``: the compiled pipeline as a template in Artifact
    Registry, tagged with the project version and ``latest``."""
    from importlib import metadata

    from pipeline.submit import check_caller
    from pipeline.templates import publish_template

    if not args.repository:
        raise UsageError(
            "publish needs --repository https://REGION-kfp.pkg.dev/PROJECT/REPOSITORY (or "
            f"{ENV_PREFIX}TEMPLATE_REPOSITORY)"
        )
    if args.pipeline_file and not os.path.isfile(args.pipeline_file):
        raise UsageError(f"--pipeline-file {args.pipeline_file}: no such file")
    version = args.tag or metadata.version("image-classifier-pipeline")
    with tempfile.TemporaryDirectory() as spec_dir:
        if args.pipeline_file:
            spec_path = args.pipeline_file
            refuse_placeholder_images(read_spec(spec_path), f"--pipeline-file {spec_path}")
        else:
            images = vertex_settings(args, ("image",)).images
            spec_path = compile_pipeline(os.path.join(spec_dir, "pipeline.yaml"), images=images)
        check_caller()
        published = publish_template(spec_path, args.repository, version)
    template = published.template(args.repository)
    print(f"{'published' if published.uploaded else 'unchanged'}      {template.uri}")
    print(f"tags           {', '.join(published.tags)}")
    print(f"run it with    --template {args.repository}/{published.package}@{version}")
    return 0
