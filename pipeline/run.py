"""``python -m pipeline.run``: submit the pipeline to Vertex AI, schedule it, or run it locally.

Without ``--local`` the freshly compiled pipeline is submitted to Vertex AI Pipelines
(``schedule`` makes it recurring). With ``--local`` it runs on this machine with kfp.local; the
local target keeps its model registry, endpoints, pipeline root and cache under one state
folder, and ``python -m pipeline.serve`` serves what a run deployed there.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
import webbrowser
from typing import TYPE_CHECKING, Any

import yaml
from google_cloud_pipeline_components import _placeholders

from components.images import PLACEHOLDERS, ImageError, is_placeholder
from components.lib.data.demo import (
    DEMO_ENDPOINT_DISPLAY_NAME,
    DEMO_MODEL_DISPLAY_NAME,
    make_demo_dataset,
)
from components.lib.evaluation.rule import GateRule
from components.lib.parameters import parameter_problems, state_dir_problem
from components.lib.serving.infra import ServingFigures
from components.lib.storage import GCS_MOUNT_ROOT_ENV, mounted_path, redact_text
from components.lib.targets import resolve_target
from components.lib.targets.base import (
    LOCAL,
    SERVING_PARAMETERS,
    TARGETS,
    VERTEX,
    Serving,
    resource_id,
)
from components.lib.targets.local import EndpointRegistry, default_state_dir
from components.lib.tuning.study import STUDY
from pipeline.compile import compile_pipeline, image_set
from pipeline.local_runner import (
    DOCKER,
    LOCAL_IMAGES,
    RUNNERS,
    SUBPROCESS,
    RunnerError,
    kfp_runner,
)
from pipeline.pipeline import PIPELINE_NAME
from pipeline.progress import StepProgress

if TYPE_CHECKING:
    from pipeline.submit import VertexSettings

LOCAL_PROJECT = "local-project"
LOCAL_LOCATION = "europe-west1"
"""What the local runner puts in the job's project and location placeholders, as Vertex AI
puts the job's own: the local target's resource names."""
ENV_PREFIX = "BEER_PIPELINE_"
DEFAULT_CONFIG = "~/.config/beer-pipeline/vertex.yaml"
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
PAST_TENSE = {"pause": "paused", "resume": "resumed", "delete": "deleted"}
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


class UsageError(Exception):
    """A mistake in the command line; printed as one line, no traceback."""


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


def _add_pipeline_options(parser: argparse.ArgumentParser, with_defaults: bool) -> None:
    """Options of every run.

    The ``schedule`` sub-command repeats them without defaults, so that a value given before
    ``schedule`` is not overwritten by the sub-command's default.
    """

    def default(value: Any) -> Any:
        return value if with_defaults else argparse.SUPPRESS

    parser.add_argument(
        "--data-uri",
        default=default(None),
        help="images as {train,eval}/<class>/<image>: gs://bucket/path or a folder "
        "(local default: the offline demo dataset)",
    )
    parser.add_argument(
        "--min-accuracy",
        type=float,
        default=default(None),
        help=f"accuracy gate on the eval split (pipeline default {GateRule.min_accuracy})",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=default([]),
        metavar="NAME=VALUE",
        help="any pipeline parameter, e.g. --param epochs=5 (repeatable)",
    )
    # No flag forces caching on for every step: it would cache the data fingerprint and the
    # champion check too, and a retrain would stop following the data.
    caching = parser.add_mutually_exclusive_group()
    caching.add_argument(
        "--enable-caching",
        dest="caching",
        action="store_const",
        const=None,
        default=default(None),
        help="each step keeps its own caching setting: unchanged steps are reused, the data "
        "fingerprint, evaluate, upload and deploy always run (the default)",
    )
    caching.add_argument(
        "--no-cache",
        dest="caching",
        action="store_const",
        const=False,
        default=default(None),
        help="run every step, even unchanged ones",
    )
    vertex = parser.add_argument_group(
        "Vertex AI (without --local)",
        f"each setting also comes from the environment ({ENV_PREFIX}<NAME>, e.g. "
        f"{ENV_PREFIX}PROJECT) or from the config file (YAML, keys as the option names with "
        "underscores)",
    )
    for name, help_text in SETTINGS.items():
        vertex.add_argument(f"--{name.replace('_', '-')}", default=default(None), help=help_text)
    vertex.add_argument(
        "--labels",
        action="append",
        default=default([]),
        metavar="KEY=VALUE",
        help="labels of the pipeline job (repeatable)",
    )
    vertex.add_argument(
        "--config",
        default=default(None),
        help=f"YAML file of settings (env {ENV_PREFIX}CONFIG, default {DEFAULT_CONFIG})",
    )
    vertex.add_argument(
        "--pipeline-file",
        default=default(None),
        help="a compiled pipeline to submit or schedule instead of a fresh default compile, e.g. "
        "one whose train step is a multi-GPU custom job (python -m pipeline.compile --replicas "
        "2 --image URI ...)",
    )
    vertex.add_argument(
        "--template",
        default=default(None),
        metavar="URI[@TAG|@sha256:DIGEST]",
        help="a published pipeline (python -m pipeline.run publish) to run instead of a fresh "
        "compile: https://REGION-kfp.pkg.dev/PROJECT/REPOSITORY/PACKAGE, at a tag (default "
        "latest, pinned to the digest it names now) or a digest",
    )
    vertex.add_argument(
        "--display-name",
        default=default(PIPELINE_NAME),
        help=f"display name of the job or schedule (default {PIPELINE_NAME})",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.run",
        description="Run the training pipeline. Without --local it is submitted to Vertex AI "
        "Pipelines (settings below). With --local it runs on this machine with kfp.local, "
        "registers the model in a local registry and deploys it to a local endpoint (serve it "
        "with `python -m pipeline.serve`); without --data-uri the local run uses a small demo "
        "dataset made from scikit-image's sample photos (a smoke test, not a benchmark).",
    )
    parser.add_argument("--local", action="store_true", help="run on this machine with kfp.local")
    parser.add_argument(
        "--runner",
        choices=RUNNERS,
        default=SUBPROCESS,
        help="with --local: run each step as a subprocess of this environment (%(default)s), or "
        "in its image through the Docker engine at DOCKER_HOST (docker: the images of `bash "
        "docker/build.sh --registry localhost --no-push`, or --image ...), as the state "
        "folder's owner, never root",
    )
    parser.add_argument(
        "--target",
        choices=TARGETS,
        default=LOCAL,
        help="with --local: where the model is registered and served (%(default)s); 'vertex' "
        "registers and deploys on Vertex AI (or the emulator at BEER_VERTEX_EMULATOR_HOST) and "
        "needs the Vertex settings, the pipeline root's bucket mounted at BEER_GCS_MOUNT_ROOT",
    )
    _add_pipeline_options(parser, with_defaults=True)
    parser.add_argument(
        "--wait", action="store_true", help="Vertex: follow the job; exit 1 unless it succeeds"
    )
    parser.add_argument(
        "--state-dir",
        default=default_state_dir(),
        help="folder of the local registry, endpoints, pipeline root and cache, and of the logs "
        "(Vertex commands too) (env BEER_PIPELINE_STATE_DIR, default %(default)s)",
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print each step and whether it would run or come from the cache, and why; run "
        "nothing (with --json: one JSON document)",
    )
    parser.add_argument("--verbose", action="store_true", help="local: stream kfp.local's output")
    parser.add_argument(
        "--json", action="store_true", help="local: end stdout with one JSON line of the run"
    )
    parser.add_argument(
        "--open-report",
        action="store_true",
        help="local: open the evaluation report in a web browser",
    )
    commands = parser.add_subparsers(dest="command", metavar="{schedule,publish}")
    schedule = commands.add_parser(
        "schedule",
        help="create, update, list, pause, resume or delete a Vertex AI pipeline schedule",
        description="Without an action: create the schedule named --display-name, or update "
        "it (cron, concurrency and the job it starts) if it exists.",
    )
    schedule.add_argument(
        "action", nargs="?", choices=("list", "pause", "resume", "delete"), help="manage instead"
    )
    schedule.add_argument("--cron", help='when to run, e.g. "0 3 * * 1" (Mondays 03:00 UTC)')
    schedule.add_argument(
        "--max-concurrent", type=int, default=1, help="runs allowed at once (%(default)s)"
    )
    _add_pipeline_options(schedule, with_defaults=False)
    publish = commands.add_parser(
        "publish",
        help="upload the compiled pipeline to a Kubeflow Pipelines repository in Artifact "
        "Registry, tagged with the project version and latest",
        description="Upload --pipeline-file (default: a fresh compile) as a pipeline template. "
        "The same file again uploads nothing; a version tag already on other content is refused.",
    )
    publish.add_argument(
        "--repository",
        default=os.environ.get(f"{ENV_PREFIX}TEMPLATE_REPOSITORY"),
        help=f"https://REGION-kfp.pkg.dev/PROJECT/REPOSITORY (env {ENV_PREFIX}TEMPLATE_REPOSITORY)",
    )
    publish.add_argument(
        "--pipeline-file",
        default=argparse.SUPPRESS,
        help="the compiled pipeline to publish (default: a fresh compile)",
    )
    publish.add_argument("--tag", help="the version tag (default: the version in pyproject.toml)")
    publish.add_argument(
        "--image",
        default=argparse.SUPPRESS,
        help=f"the steps' image for the fresh compile (env {ENV_PREFIX}IMAGE or the config file)",
    )
    return parser


def _read_config(path: str) -> dict[str, Any]:
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


def vertex_settings(
    args: argparse.Namespace, required: tuple[str, ...] = REQUIRED_SETTINGS
) -> VertexSettings:
    """Settings from flags, then ``BEER_PIPELINE_<NAME>``, then the config file.

    Everything wrong is reported at once, in one UsageError: every missing one of ``required``,
    a region Vertex AI does not have, a pipeline root outside Cloud Storage, an image that is
    still the placeholder, a malformed experiment name or label. Nothing here uses the network.
    """
    from pipeline.submit import VertexSettings, check_region

    path = getattr(args, "config", None) or os.environ.get(f"{ENV_PREFIX}CONFIG", DEFAULT_CONFIG)
    config = _read_config(os.path.expanduser(path))
    values: dict[str, Any] = {}
    for name in SETTINGS:
        values[name] = (
            getattr(args, name, None)
            or os.environ.get(f"{ENV_PREFIX}{name.upper()}")
            or config.get(name)
            or None
        )
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
            placeholders = VertexSettings(**values).images.placeholders()
        except ImageError as error:
            problems.append(str(error))
        else:
            if placeholders:
                problems.append(
                    f"image {placeholders[0]} is a placeholder, which no registry holds: build "
                    "and push the images (bash docker/build.sh --project PROJECT --region "
                    f"REGION) and pass the GPU image's URI with --image, {ENV_PREFIX}IMAGE or "
                    f"'image' in {path}"
                )
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


def _arguments(args: argparse.Namespace, parameters: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Pipeline arguments from --param, --data-uri and --min-accuracy."""
    arguments = parse_params(getattr(args, "param", []), parameters)
    if getattr(args, "data_uri", None):
        arguments["data_uri"] = args.data_uri
    if getattr(args, "min_accuracy", None) is not None:
        arguments["min_accuracy"] = args.min_accuracy
    _check_serving(arguments, parameters)
    return arguments


def _check_values(parameters: dict[str, dict[str, Any]], arguments: dict[str, Any]) -> None:
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


def _vertex_job(args: argparse.Namespace, spec_dir: str) -> tuple[VertexSettings, str, dict]:
    """The settings, the spec (--pipeline-file, or freshly compiled with the image) and the
    typed arguments of a Vertex AI job; all checked before anything is sent."""
    from pipeline.submit import check_caller

    spec_path = getattr(args, "pipeline_file", None)
    template = getattr(args, "template", None)
    if spec_path and template:
        raise UsageError("give --template or --pipeline-file, not both")
    if spec_path or template:
        source = f"--template {template}" if template else f"--pipeline-file {spec_path}"
        if getattr(args, "image", None):
            raise UsageError(
                f"--image applies to a fresh compile; the images of {source} are compiled in "
                "(python -m pipeline.compile --image URI ...)"
            )
        if spec_path and not os.path.isfile(spec_path):
            raise UsageError(f"--pipeline-file {spec_path}: no such file")
        settings = vertex_settings(args, tuple(n for n in REQUIRED_SETTINGS if n != "image"))
        if template:
            check_caller()  # before the template's download, the first request
            spec_path, spec = _published_template(template)
        else:
            spec = _read_spec(spec_path)
        _refuse_placeholder_images(spec, source)
    else:
        settings = vertex_settings(args)
        spec_path = compile_pipeline(
            os.path.join(spec_dir, "pipeline.yaml"), images=settings.images
        )
        with open(spec_path) as file:
            spec = yaml.safe_load(file)
    parameters = pipeline_parameters(spec)
    arguments = {"project": settings.project, "location": settings.region}
    arguments.update(_arguments(args, parameters))
    arguments["target"] = VERTEX
    _check_values(parameters, arguments)
    return settings, spec_path, arguments


def _read_spec(path: str) -> dict[str, Any]:
    with open(path) as file:
        return yaml.safe_load(file)


def _refuse_placeholder_images(spec: dict[str, Any], source: str) -> None:
    """A compiled pipeline whose steps run the placeholder image fails to pull on Vertex AI."""
    placeholders = sorted({image for image in _images(spec) if is_placeholder(image)})
    if placeholders:
        raise UsageError(
            f"{source} runs the placeholder image {placeholders[0]}, which no registry "
            "holds: compile it with --image URI (python -m pipeline.compile --image URI ...)"
        )


def _images(spec: dict[str, Any]) -> list[str]:
    """The container images of a compiled pipeline: its steps' and its serving image's default."""
    executors = spec.get("deploymentSpec", {}).get("executors", {})
    images = [e["container"]["image"] for e in executors.values() if "container" in e]
    parameters = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    serving = parameters.get("serving_image", {}).get("defaultValue")
    return [*images, serving] if serving else images


def service_accounts(settings: VertexSettings, arguments: dict[str, Any]) -> dict[str, str]:
    """The service accounts a job runs things as, each with what runs as it: whoever submits
    needs ``iam.serviceAccounts.actAs`` on each (docs/vertex-iam.md)."""
    accounts = {}
    if settings.service_account:
        accounts[settings.service_account] = "the pipeline job runs as it"
    serving = arguments.get("serving_service_account")
    if serving:
        accounts.setdefault(serving, "the deployed model runs as it")
    return accounts


def _note_service_account(settings: VertexSettings) -> None:
    if not settings.service_account:
        print(
            "note: no --service-account: the job runs as the project's Compute Engine default "
            "service account",
            file=sys.stderr,
        )


def _published_template(text: str) -> tuple[str, dict[str, Any]]:
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
    version = args.tag or metadata.version("beer-vertex-pipeline")
    with tempfile.TemporaryDirectory() as spec_dir:
        if args.pipeline_file:
            spec_path = args.pipeline_file
            _refuse_placeholder_images(_read_spec(spec_path), f"--pipeline-file {spec_path}")
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


def print_plan(args: argparse.Namespace) -> int:
    """``--plan``: what a run with these options would run and take from the cache, and why."""
    from kfp import components

    from pipeline import plan

    caching = args.caching is not False
    if args.local:
        state_dir, pipeline, _, arguments, root = _local_job(args)
        result = plan.plan_local(pipeline.pipeline_spec, arguments, root, state_dir, caching)
    else:
        from pipeline.submit import preflight

        with tempfile.TemporaryDirectory() as spec_dir:
            settings, spec_path, arguments = _vertex_job(args, spec_dir)
            preflight(settings)
            spec = components.load_component_from_file(spec_path).pipeline_spec
            result = plan.plan_vertex(
                spec, arguments, settings.project, settings.region, settings.pipeline_root, caching
            )
    print(json.dumps(result.to_json()) if args.json else result.table())
    return 0


def submit(args: argparse.Namespace) -> int:
    """``python -m pipeline.run`` without --local: submit to Vertex AI Pipelines."""
    from pipeline.submit import console_url, preflight, submit_pipeline, wait_for

    with tempfile.TemporaryDirectory() as spec_dir:
        settings, spec_path, arguments = _vertex_job(args, spec_dir)
        preflight(settings, service_accounts(settings, arguments))
        _note_service_account(settings)
        job = submit_pipeline(settings, spec_path, args.display_name, arguments, args.caching)
    print(f"submitted      {job.resource_name}")
    print(f"console        {console_url(settings, job.name)}")
    if args.wait:
        print(f"waiting        (the job's progress is logged in {args.log_path})", flush=True)
        wait_for(job)
        print(f"state          {job.state.name}")
    return 0


def schedule(args: argparse.Namespace) -> int:
    """``python -m pipeline.run schedule ...``: create or update, list, pause, resume, delete."""
    from pipeline.submit import (
        change_schedule,
        check_cron,
        list_schedules,
        preflight,
        upsert_schedule,
    )

    location_only = ("project", "region")
    if args.action:
        settings = vertex_settings(args, location_only)
        preflight(settings)
        if args.action == "list":
            for row in list_schedules(settings):
                print(
                    f"{row['display_name']:<32} {row['state']:<10} {row['cron']:<16} {row['name']}"
                )
            return 0
        names = change_schedule(settings, args.display_name, args.action)
        print(f"{PAST_TENSE[args.action]} {names}")
        return 0
    if not args.cron:
        raise UsageError('schedule needs --cron, e.g. --cron "0 3 * * 1" (or an action: list, ...)')
    if problem := check_cron(args.cron):
        raise UsageError(problem)
    if args.max_concurrent < 1:
        raise UsageError(f"--max-concurrent must be at least 1, got {args.max_concurrent}")
    with tempfile.TemporaryDirectory() as spec_dir:
        settings, spec_path, arguments = _vertex_job(args, spec_dir)
        preflight(settings, service_accounts(settings, arguments))
        _note_service_account(settings)
        name, created = upsert_schedule(
            settings,
            spec_path,
            args.display_name,
            arguments,
            getattr(args, "caching", None),
            args.cron,
            args.max_concurrent,
        )
    print(f"{'created' if created else 'updated'} schedule {name} ({args.cron!r})")
    return 0


def _run_id() -> str:
    """Time of the run, and the process, so that runs started together keep separate logs."""
    return f"{datetime.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}"


def _local_job(args: argparse.Namespace) -> tuple[str, Any, dict, dict, str]:
    """The state folder, the compiled pipeline, its parameters, the arguments and the pipeline
    root of a local run."""
    from kfp import components

    state_dir = os.path.abspath(args.state_dir)
    if problem := state_dir_problem(state_dir):
        raise UsageError(f"--state-dir: {problem}")
    target, pipeline_root = _local_target(args, state_dir)
    images = PLACEHOLDERS
    if args.runner == DOCKER:
        try:
            images = image_set(args) if getattr(args, "image", None) else LOCAL_IMAGES
        except ImageError as error:
            raise UsageError(str(error)) from None
    with tempfile.TemporaryDirectory() as spec_dir:  # private: runs may start side by side
        spec_path = compile_pipeline(os.path.join(spec_dir, "pipeline.yaml"), images=images)
        with open(spec_path) as file:
            spec_text = _resolve_job_placeholders(
                file.read(),
                target.get("project", LOCAL_PROJECT),
                target.get("location", LOCAL_LOCATION),
            )
        with open(spec_path, "w") as file:
            file.write(spec_text)
        parameters = pipeline_parameters(yaml.safe_load(spec_text))
        pipeline = components.load_component_from_file(spec_path)
    arguments = _arguments(args, parameters)
    _check_values(parameters, {**arguments, **target})
    if "data_uri" not in arguments:
        arguments["data_uri"] = make_demo_dataset(os.path.join(state_dir, "demo-data"))
        arguments.setdefault("model_display_name", DEMO_MODEL_DISPLAY_NAME)
        arguments.setdefault("endpoint_display_name", DEMO_ENDPOINT_DISPLAY_NAME)
        print(
            f"using the offline demo dataset at {arguments['data_uri']}, registered as "
            f"{arguments['model_display_name']!r} on endpoint "
            f"{arguments['endpoint_display_name']!r}",
            file=sys.stderr,
        )
    arguments.update(target)
    return state_dir, pipeline, parameters, arguments, pipeline_root


def run_local(args: argparse.Namespace) -> dict[str, Any]:
    """Run the pipeline with kfp.local and return the summary of the run."""
    import kfp.local

    from pipeline.plan import remember_arguments

    experiment = _experiment_name(args)
    state_dir, pipeline, parameters, arguments, pipeline_root = _local_job(args)
    remember_arguments(state_dir, arguments)
    data_uri = arguments["data_uri"]
    try:
        runner = kfp_runner(
            args.runner, state_dir, pipeline_root, [] if "://" in data_uri else [data_uri]
        )
    except RunnerError as error:
        raise UsageError(str(error)) from None
    kfp.local.init(
        runner=runner,
        pipeline_root=pipeline_root,
        enable_caching=args.caching is not False,
    )
    log_path = os.path.join(state_dir, "logs", f"run-{_run_id()}.log")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w") as log:
        progress = StepProgress(log, verbose=args.verbose)
        try:
            with progress.capturing(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*non-Python base image.*")
                warnings.filterwarnings(
                    "ignore", message=".*no effect in the current local runner.*"
                )
                task = pipeline(**arguments)
        except RuntimeError as error:
            detail = "\n  ".join(progress.failure) or str(error)
            raise PipelineFailed(
                f"step {progress.failed_step or '?'} failed:\n  {detail}\nfull log: {log_path}"
            ) from None
    outputs = task.outputs
    values = {
        name: arguments.get(name, spec.get("defaultValue")) for name, spec in parameters.items()
    }
    endpoint = outputs["endpoint"] or (
        _existing_endpoint(state_dir, values) if values["target"] == LOCAL else None
    )
    champion_accuracy = outputs["champion_accuracy"]
    evaluation = outputs["evaluation"]
    summary = {
        "accuracy": outputs["accuracy"],
        "accuracy_ci95": evaluation["accuracy_ci95"],
        "eval_images": int(evaluation["eval_images"]),
        "eval_split": evaluation["eval_split"],
        "champion_accuracy": champion_accuracy if champion_accuracy >= 0 else None,
        "champion_status": evaluation["champion_status"],
        "champion": evaluation["champion"],
        "paired_test": evaluation.get("paired_test"),
        "temperature": evaluation.get("temperature"),
        "ece_before": evaluation.get("ece_before"),
        "ece_after": evaluation.get("ece_after"),
        "calibration": evaluation.get("calibration"),
        "tflite": evaluation.get("tflite"),
        "min_accuracy": values["min_accuracy"],
        "gate_rule": evaluation["gate"]["rule"],
        "serving": evaluation["serving"],
        # typed again: a whole number inside a step's dict output comes back as a float
        "trained_with": STUDY.chosen(evaluation.get("trained_with", {})),
        "tuning_trials": values["tuning_trials"],
        "deployed": bool(outputs["deployed"]),
        "decision": outputs["decision"],
        "model_version": outputs["model_version"] or None,
        "endpoint": endpoint,
        "report": _report_file(outputs["report"].path),
        "step_seconds": progress.step_seconds,
        "target": values["target"],
        "state_dir": state_dir,
        "log": log_path,
    }
    summary["params"] = run_params(values)
    summary["metrics"] = run_metrics(summary)
    if experiment:
        summary["experiment"] = experiment
        summary["experiment_run"] = _record_run(experiment, values, state_dir, summary)
    return summary


def _experiment_name(args: argparse.Namespace) -> str | None:
    """``--experiment`` (or ``BEER_PIPELINE_EXPERIMENT``) of a local run, checked."""
    name = getattr(args, "experiment", None) or os.environ.get(f"{ENV_PREFIX}EXPERIMENT")
    if name and not EXPERIMENT_NAME.fullmatch(name):
        raise UsageError(
            f"experiment {name!r}: lowercase letters, digits and dashes, starting with a letter "
            "or digit, at most 128 characters"
        )
    return name


def run_params(values: dict[str, Any]) -> dict[str, str | int | float]:
    """The run's pipeline parameters as an experiment records them (true/false as text; URIs
    redacted, as everywhere a run's parameters are written)."""
    return {
        name: str(value).lower()
        if isinstance(value, bool)
        else redact_text(value)
        if isinstance(value, str)
        else value
        for name, value in sorted(values.items())
        if value is not None
    }


def run_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The run's final figures, as numbers: what an experiment compares runs by."""
    low, high = summary["accuracy_ci95"]
    metrics = {
        "accuracy": summary["accuracy"],
        "accuracy_ci95_low": low,
        "accuracy_ci95_high": high,
        "eval_images": summary["eval_images"],
        "champion_accuracy": summary["champion_accuracy"],
        "ece_before": summary["ece_before"],
        "ece_after": summary["ece_after"],
        "temperature": summary["temperature"],
        "deployed": summary["deployed"],
        **{
            name: summary["serving"][name]
            for name in ("latency_p95_ms", "model_mb", "load_seconds")
        },
    }
    return {name: float(value) for name, value in metrics.items() if value is not None}


def _record_run(
    experiment: str, values: dict[str, Any], state_dir: str, summary: dict[str, Any]
) -> str | None:
    """Record the run in ``experiment`` where its target keeps runs: Vertex AI Experiments for
    ``--target vertex``, else ``<state dir>/experiments/``. A run that cannot be recorded is
    not undone: a warning says why."""
    from components.lib.targets import experiments

    project, location = resolve_target(
        values["target"],
        values["project"],
        values["location"],
        state_dir,
        LOCAL_PROJECT,
        LOCAL_LOCATION,
    )
    tracker = experiments(values["target"], state_dir, project, location)
    run = f"run-{_run_id()}"
    try:
        return tracker.record_run(experiment, run, summary["params"], summary["metrics"])
    except (OSError, RuntimeError, ValueError) as error:  # the run stands; its record is missing
        print(
            f"warning: the run could not be recorded in experiment {experiment!r}: {error}",
            file=sys.stderr,
        )
        return None


def _local_target(args: argparse.Namespace, state_dir: str) -> tuple[dict[str, Any], str]:
    """The target parameters of a --local run, and where kfp.local keeps the steps' outputs.

    ``--target vertex`` registers and deploys on Vertex AI (or the emulator named by
    ``BEER_VERTEX_EMULATOR_HOST``): the outputs then go under the pipeline root's gs:// folder
    through its mount (``BEER_GCS_MOUNT_ROOT``, Cloud Storage FUSE), as on Vertex AI Pipelines,
    so that Vertex AI reads the model the steps wrote.
    """
    if args.target == LOCAL:
        return (
            {"target": LOCAL, "local_state_dir": state_dir},
            os.path.join(state_dir, "pipeline_root"),
        )
    # The steps run here, in this environment: no image to name.
    settings = vertex_settings(args, tuple(n for n in REQUIRED_SETTINGS if n != "image"))
    bucket = settings.pipeline_root[len("gs://") :].split("/", 1)[0]
    if not os.path.isdir(mounted_path(f"gs://{bucket}")):
        raise UsageError(
            f"--target vertex runs the steps here, writing to {settings.pipeline_root} through "
            f"its mount, and the bucket is not mounted at {mounted_path(f'gs://{bucket}')}: "
            f"mount it there with Cloud Storage FUSE, or set {GCS_MOUNT_ROOT_ENV} to the "
            "folder where it is mounted"
        )
    target = {"project": settings.project, "location": settings.region, "target": VERTEX}
    return {**target, "local_state_dir": ""}, mounted_path(settings.pipeline_root)


def _resolve_job_placeholders(spec_text: str, project: str, location: str) -> str:
    """The compiled spec with the job's project and location filled in, as Vertex AI does at
    run time: kfp.local does not know these placeholders."""
    return spec_text.replace(_placeholders.PROJECT_ID_PLACEHOLDER, project).replace(
        _placeholders.LOCATION_PLACEHOLDER, location
    )


def _existing_endpoint(state_dir: str, values: dict[str, Any]) -> str | None:
    """The endpoint that keeps serving when the gate is closed, if one was ever deployed."""
    project, location = resolve_target(
        "local", values["project"], values["location"], state_dir, LOCAL_PROJECT, LOCAL_LOCATION
    )
    endpoints = EndpointRegistry(state_dir, project, location)
    record = endpoints.get(resource_id(values["endpoint_display_name"]))
    return record["name"] if record else None


def _report_file(path: str) -> str:
    """The report as a file a browser opens: kfp.local names the artifact file without a suffix."""
    html_path = f"{path}.html"
    shutil.copyfile(path, html_path)
    return html_path


class PipelineFailed(Exception):
    """A step failed; the message names it and quotes its error."""


def _print_summary(summary: dict[str, Any]) -> None:
    steps = ", ".join(f"{step} {seconds:.1f}s" for step, seconds in summary["step_seconds"].items())
    low, high = summary["accuracy_ci95"]
    calibration = (
        f"ECE {summary['ece_before']:.4f} -> {summary['ece_after']:.4f} (temperature "
        f"{summary['temperature']:.3f}, 15 bins)"
        if summary["ece_before"] is not None
        else "not calibrated (no validation split)"
    )
    if summary.get("calibration"):
        calibration += f"; {summary['calibration']}"
    rows = [
        (
            "accuracy",
            f"{summary['accuracy']:.4f} on {summary['eval_images']} photos, 95% CI "
            f"{low:.4f}-{high:.4f} (required {summary['min_accuracy']})",
        ),
        ("eval split", summary["eval_split"] or "the eval split"),
        ("trained with", _trained_with(summary)),
        ("champion", summary["champion"]),
        ("calibration", calibration),
        ("serving", ServingFigures.from_dict(summary["serving"]).describe()),
        *(
            (
                f"tflite {edge['kind']}",
                f"{edge['accuracy']:.4f} ({edge['accuracy_change']:+.4f} vs the SavedModel), "
                f"{edge['size_bytes'] / 1e6:.2f} MB, {edge['file']}",
            )
            for edge in summary.get("tflite") or ()
        ),
        ("decision", summary["decision"]),
        ("model version", summary["model_version"] or "none registered"),
        ("endpoint", summary["endpoint"] or "none"),
        ("steps run", steps or "all cached"),
        ("report", summary["report"]),
    ]
    if summary.get("experiment"):
        rows.append(("experiment", f"{summary['experiment']}: {summary['experiment_run']}"))
    for label, value in rows:
        print(f"{label:<14} {value}")
    if summary["endpoint"] and summary["target"] == LOCAL:
        print(f"serve it with  python -m pipeline.serve --state-dir {summary['state_dir']}")


def _trained_with(summary: dict[str, Any]) -> str:
    """The tuned parameters the model was trained with, and where they came from."""
    chosen = ", ".join(f"{name} {value}" for name, value in summary["trained_with"].items())
    trials = summary["tuning_trials"]
    return f"{chosen} ({f'the best of {trials} trials' if trials else 'as given, not tuned'})"


def _run_vertex_command(args: argparse.Namespace) -> int:
    """Submit or schedule, with the SDK's log and any traceback in a log file, not the terminal:
    the terminal gets one line per outcome."""
    import logging

    from components.lib.targets.vertex import VertexError
    from pipeline.submit import SetupError, log_to_file
    from pipeline.templates import TemplateError

    args.log_path = os.path.abspath(os.path.join(args.state_dir, "logs", f"vertex-{_run_id()}.log"))
    with log_to_file(args.log_path):
        try:
            if args.command == "publish":
                return publish(args)
            if args.command == "schedule":
                return schedule(args)
            return print_plan(args) if args.plan else submit(args)
        except (UsageError, SetupError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except (VertexError, TemplateError) as error:
            logging.getLogger(__name__).exception("failed")
            print(f"error: {error} (details: {args.log_path})", file=sys.stderr)
            return 1
        except Exception as error:
            logging.getLogger(__name__).exception("failed")
            print(
                f"error: unexpected {type(error).__name__}: {_one_line(str(error))} (details: "
                f"{args.log_path})",
                file=sys.stderr,
            )
            return 1


def _one_line(text: str) -> str:
    return " ".join(text.split())[:500]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command in ("schedule", "publish") or not args.local:
            return _run_vertex_command(args)
        if args.plan:
            return print_plan(args)
        summary = run_local(args)
    except (UsageError, PipelineFailed) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, UsageError) else 1
    except OSError as error:  # the state folder filled up or went away mid-run
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        local = args.command is None and args.local
        hint = "; run the same command again to resume, finished steps are cached" if local else ""
        print(f"interrupted{hint}", file=sys.stderr)
        return 130
    _print_summary(summary)
    if args.open_report and not webbrowser.open(f"file://{summary['report']}"):
        print(
            f"--open-report: no browser can be started here; open {summary['report']} yourself",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
