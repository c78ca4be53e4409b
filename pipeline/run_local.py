"""``python -m pipeline.run --local``: the pipeline run on this machine with kfp.local, its
target (the local registry, or Vertex AI through the bucket's mount), and its summary."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import warnings
from typing import Any

import yaml
from google_cloud_pipeline_components import _placeholders

from components.images import PLACEHOLDERS, ImageError
from components.lib.data.demo import (
    DEMO_ENDPOINT_DISPLAY_NAME,
    DEMO_MODEL_DISPLAY_NAME,
    DEMO_PARAMETERS,
    make_demo_dataset,
)
from components.lib.parameters import state_dir_problem
from components.lib.storage import GCS_MOUNT_ROOT_ENV, mounted_path
from components.lib.targets import needs_cloud, resolve_target
from components.lib.targets.base import resource_id
from components.lib.targets.local import EndpointRegistry
from pipeline.arguments import check_values, pipeline_arguments, pipeline_parameters
from pipeline.compile import compile_pipeline, image_set
from pipeline.local_runner import DOCKER, LOCAL_IMAGES, RunnerError, kfp_runner
from pipeline.progress import StepProgress
from pipeline.run_summary import registered_names, run_summary
from pipeline.settings import (
    ENV_PREFIX,
    EXPERIMENT_NAME,
    REQUIRED_SETTINGS,
    UsageError,
    run_id,
    vertex_settings,
)

LOCAL_PROJECT = "local-project"
LOCAL_LOCATION = "europe-west1"
"""What the local runner puts in the job's project and location placeholders, as Vertex AI
puts the job's own: the local target's resource names."""


class PipelineFailed(Exception):
    """A step failed; the message names it and quotes its error."""


def local_job(args: argparse.Namespace) -> tuple[str, Any, dict, dict, str]:
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
    arguments = pipeline_arguments(args, parameters)
    check_values(parameters, {**arguments, **target})
    if "data_uri" not in arguments:
        arguments["data_uri"] = make_demo_dataset(os.path.join(state_dir, "demo-data"))
        arguments.setdefault("model_display_name", DEMO_MODEL_DISPLAY_NAME)
        arguments.setdefault("endpoint_display_name", DEMO_ENDPOINT_DISPLAY_NAME)
        for name, value in DEMO_PARAMETERS.items():
            arguments.setdefault(name, value)
        demo_training = ", ".join(f"{name}={arguments[name]}" for name in DEMO_PARAMETERS)
        print(
            f"using the offline demo dataset at {arguments['data_uri']}, registered as "
            f"{arguments['model_display_name']!r} on endpoint "
            f"{arguments['endpoint_display_name']!r}, trained with {demo_training}",
            file=sys.stderr,
        )
    arguments.update(target)
    return state_dir, pipeline, parameters, arguments, pipeline_root


def _local_target(args: argparse.Namespace, state_dir: str) -> tuple[dict[str, Any], str]:
    """The target parameters of a --local run, and where kfp.local keeps the steps' outputs.

    ``--target vertex`` registers and deploys on Vertex AI (or the emulator named by
    ``IMAGE_CLASSIFIER_VERTEX_EMULATOR_HOST``): the outputs then go under the pipeline root's
    gs:// folder through its mount (``IMAGE_CLASSIFIER_GCS_MOUNT_ROOT``, Cloud Storage FUSE), as
    on Vertex AI Pipelines, so that Vertex AI reads the model the steps wrote.
    """
    if not needs_cloud(args.target):
        return (
            {"target": args.target, "local_state_dir": state_dir},
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
    target = {"project": settings.project, "location": settings.region, "target": args.target}
    return {**target, "local_state_dir": ""}, mounted_path(settings.pipeline_root)


def _resolve_job_placeholders(spec_text: str, project: str, location: str) -> str:
    """The compiled spec with the job's project and location filled in, as Vertex AI does at
    run time: kfp.local does not know these placeholders."""
    return spec_text.replace(_placeholders.PROJECT_ID_PLACEHOLDER, project).replace(
        _placeholders.LOCATION_PLACEHOLDER, location
    )


def run_local(args: argparse.Namespace) -> dict[str, Any]:
    """Run the pipeline with kfp.local and return the summary of the run."""
    import kfp.local

    from pipeline.plan import remember_arguments

    experiment = _experiment_name(args)
    state_dir, pipeline, parameters, arguments, pipeline_root = local_job(args)
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
    log_path = os.path.join(state_dir, "logs", f"run-{run_id()}.log")
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
        None if needs_cloud(values["target"]) else _existing_endpoint(state_dir, values)
    )
    summary = run_summary(
        outputs,
        values,
        endpoint=endpoint,
        report=_report_file(outputs["report"].path),
        step_seconds=progress.step_seconds,
        state_dir=state_dir,
        log=log_path,
    )
    if experiment:
        summary["experiment"] = experiment
        summary["experiment_run"] = _record_run(experiment, values, state_dir, summary)
    return summary


def _experiment_name(args: argparse.Namespace) -> str | None:
    """``--experiment`` (or ``IMAGE_CLASSIFIER_EXPERIMENT``) of a local run, checked."""
    name = getattr(args, "experiment", None) or os.environ.get(f"{ENV_PREFIX}EXPERIMENT")
    if name and not EXPERIMENT_NAME.fullmatch(name):
        raise UsageError(
            f"experiment {name!r}: lowercase letters, digits and dashes, starting with a letter "
            "or digit, at most 128 characters"
        )
    return name


def _project_and_location(state_dir: str, values: dict[str, Any]) -> tuple[str, str]:
    """Where the run's target registers and serves: its project and location, local ones for
    the local target."""
    return resolve_target(
        values["target"],
        values["project"],
        values["location"],
        state_dir,
        LOCAL_PROJECT,
        LOCAL_LOCATION,
    )


def _record_run(
    experiment: str, values: dict[str, Any], state_dir: str, summary: dict[str, Any]
) -> str | None:
    """Record the run in ``experiment`` where its target keeps runs: Vertex AI Experiments for
    ``--target vertex``, else ``<state dir>/experiments/``. A run that cannot be recorded is
    not undone: a warning says why."""
    from components.lib.targets import experiments

    project, location = _project_and_location(state_dir, values)
    tracker = experiments(values["target"], state_dir, project, location)
    run = f"run-{run_id()}"
    try:
        return tracker.record_run(experiment, run, summary["params"], summary["metrics"])
    except (OSError, RuntimeError, ValueError) as error:  # the run stands; its record is missing
        print(
            f"warning: the run could not be recorded in experiment {experiment!r}: {error}",
            file=sys.stderr,
        )
        return None


def _existing_endpoint(state_dir: str, values: dict[str, Any]) -> str | None:
    """The endpoint that keeps serving when the gate is closed, if one was ever deployed."""
    project, location = _project_and_location(state_dir, values)
    endpoints = EndpointRegistry(state_dir, project, location)
    record = endpoints.get(resource_id(registered_names(values)[1]))
    return record["name"] if record else None


def _report_file(path: str) -> str:
    """The report as a file a browser opens: kfp.local names the artifact file without a suffix."""
    html_path = f"{path}.html"
    shutil.copyfile(path, html_path)
    return html_path
