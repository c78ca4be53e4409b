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

from components.lib.data.demo import (
    DEMO_ENDPOINT_DISPLAY_NAME,
    DEMO_MODEL_DISPLAY_NAME,
    make_demo_dataset,
)
from components.lib.targets.base import resource_id
from components.lib.targets.local import DEFAULT_STATE_DIR, EndpointRegistry
from pipeline.compile import compile_pipeline
from pipeline.pipeline import PIPELINE_NAME
from pipeline.progress import StepProgress

if TYPE_CHECKING:
    from pipeline.submit import VertexSettings

LOCAL_PROJECT = "local-project"
ENV_PREFIX = "BEER_PIPELINE_"
DEFAULT_CONFIG = "~/.config/beer-pipeline/vertex.yaml"
SETTINGS = {
    "project": "Google Cloud project (required)",
    "region": "Vertex AI region, e.g. europe-west4 (required)",
    "pipeline_root": "gs:// folder for the steps' outputs (required)",
    "service_account": "service account the job runs as",
    "network": "VPC network to peer with, projects/NUMBER/global/networks/NAME",
    "experiment": "Vertex AI experiment to record the run in",
}
REQUIRED_SETTINGS = ("project", "region", "pipeline_root")
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
        help="accuracy gate on the eval split (pipeline default 0.8)",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=default([]),
        metavar="NAME=VALUE",
        help="any pipeline parameter, e.g. --param epochs=5 (repeatable)",
    )
    caching = parser.add_mutually_exclusive_group()
    caching.add_argument(
        "--enable-caching",
        dest="caching",
        action="store_const",
        const=True,
        default=default(None),
        help="reuse the results of unchanged steps (the default)",
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
    _add_pipeline_options(parser, with_defaults=True)
    parser.add_argument(
        "--wait", action="store_true", help="Vertex: follow the job; exit 1 unless it succeeds"
    )
    parser.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help="local: folder of the registry, endpoints, pipeline root and cache "
        "(env BEER_PIPELINE_STATE_DIR, default %(default)s)",
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
    commands = parser.add_subparsers(dest="command", metavar="{schedule}")
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

    Raises UsageError naming the first of ``required`` that none of them gives.
    """
    from pipeline.submit import VertexSettings

    path = getattr(args, "config", None) or os.environ.get(f"{ENV_PREFIX}CONFIG", DEFAULT_CONFIG)
    config = _read_config(os.path.expanduser(path))
    values: dict[str, Any] = {}
    for name in SETTINGS:
        value = (
            getattr(args, name, None)
            or os.environ.get(f"{ENV_PREFIX}{name.upper()}")
            or config.get(name)
        )
        if name in required and not value:
            raise UsageError(
                f"missing setting {name}: pass --{name.replace('_', '-')}, set "
                f"{ENV_PREFIX}{name.upper()} or put {name!r} in {path}; or add --local to run "
                "on this machine"
            )
        values[name] = value or None
    if values["pipeline_root"] and not values["pipeline_root"].startswith("gs://"):
        raise UsageError(
            f"pipeline_root {values['pipeline_root']!r} must be a gs:// folder (Vertex AI "
            "writes the step outputs there)"
        )
    labels = _labels(getattr(args, "labels", []), config.get("labels") or {})
    return VertexSettings(**values, labels=labels)


def _arguments(args: argparse.Namespace, parameters: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Pipeline arguments from --param, --data-uri and --min-accuracy."""
    arguments = parse_params(getattr(args, "param", []), parameters)
    if getattr(args, "data_uri", None):
        arguments["data_uri"] = args.data_uri
    if getattr(args, "min_accuracy", None) is not None:
        arguments["min_accuracy"] = args.min_accuracy
    return arguments


def _vertex_job(args: argparse.Namespace, spec_dir: str) -> tuple[VertexSettings, str, dict]:
    """The settings, the spec (--pipeline-file, or freshly compiled) and the typed arguments
    of a Vertex AI job."""
    settings = vertex_settings(args)
    spec_path = getattr(args, "pipeline_file", None)
    if spec_path and not os.path.isfile(spec_path):
        raise UsageError(f"--pipeline-file {spec_path}: no such file")
    spec_path = spec_path or compile_pipeline(os.path.join(spec_dir, "pipeline.yaml"))
    with open(spec_path) as file:
        parameters = pipeline_parameters(yaml.safe_load(file))
    arguments = {"project": settings.project, "location": settings.region}
    arguments.update(_arguments(args, parameters))
    arguments["target"] = "vertex"
    if not settings.service_account:
        print(
            "note: no --service-account: the job runs as the project's Compute Engine default "
            "service account",
            file=sys.stderr,
        )
    return settings, spec_path, arguments


def submit(args: argparse.Namespace) -> int:
    """``python -m pipeline.run`` without --local: submit to Vertex AI Pipelines."""
    from pipeline.submit import console_url, submit_pipeline, wait_for

    with tempfile.TemporaryDirectory() as spec_dir:
        settings, spec_path, arguments = _vertex_job(args, spec_dir)
        job = submit_pipeline(settings, spec_path, args.display_name, arguments, args.caching)
    print(f"submitted      {job.resource_name}")
    print(f"console        {console_url(settings, job.name)}")
    if args.wait:
        wait_for(job)
        print(f"state          {job.state.name}")
    return 0


def schedule(args: argparse.Namespace) -> int:
    """``python -m pipeline.run schedule ...``: create or update, list, pause, resume, delete."""
    from pipeline.submit import change_schedule, list_schedules, upsert_schedule

    location_only = ("project", "region")
    if args.action == "list":
        for row in list_schedules(vertex_settings(args, location_only)):
            print(f"{row['display_name']:<32} {row['state']:<10} {row['cron']:<16} {row['name']}")
        return 0
    if args.action:
        names = change_schedule(
            vertex_settings(args, location_only), args.display_name, args.action
        )
        print(f"{PAST_TENSE[args.action]} {names}")
        return 0
    if not args.cron:
        raise UsageError('schedule needs --cron, e.g. --cron "0 3 * * 1" (or an action: list, ...)')
    if args.max_concurrent < 1:
        raise UsageError(f"--max-concurrent must be at least 1, got {args.max_concurrent}")
    with tempfile.TemporaryDirectory() as spec_dir:
        settings, spec_path, arguments = _vertex_job(args, spec_dir)
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


def run_local(args: argparse.Namespace) -> dict[str, Any]:
    """Run the pipeline with kfp.local and return the summary of the run."""
    import kfp.local
    from kfp import components

    state_dir = os.path.abspath(args.state_dir)
    with tempfile.TemporaryDirectory() as spec_dir:  # private: runs may start side by side
        spec_path = compile_pipeline(os.path.join(spec_dir, "pipeline.yaml"))
        with open(spec_path) as file:
            parameters = pipeline_parameters(yaml.safe_load(file))
        pipeline = components.load_component_from_file(spec_path)
    arguments: dict[str, Any] = {"project": LOCAL_PROJECT}
    arguments.update(_arguments(args, parameters))
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
    arguments.update(target="local", local_state_dir=state_dir)

    kfp.local.init(
        runner=kfp.local.SubprocessRunner(use_venv=False),
        pipeline_root=os.path.join(state_dir, "pipeline_root"),
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
    endpoint = outputs["endpoint"] or _existing_endpoint(state_dir, values)
    champion_accuracy = outputs["champion_accuracy"]
    evaluation = outputs["evaluation"]
    return {
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
        "min_accuracy": values["min_accuracy"],
        "gate_rule": evaluation["gate"]["rule"],
        "deployed": bool(outputs["deployed"]),
        "decision": outputs["decision"],
        "model_version": outputs["model_version"] or None,
        "endpoint": endpoint,
        "report": _report_file(outputs["report"].path),
        "step_seconds": progress.step_seconds,
        "state_dir": state_dir,
        "log": log_path,
    }


def _existing_endpoint(state_dir: str, values: dict[str, Any]) -> str | None:
    """The endpoint that keeps serving when the gate is closed, if one was ever deployed."""
    endpoints = EndpointRegistry(state_dir, values["project"], values["location"])
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
    rows = [
        (
            "accuracy",
            f"{summary['accuracy']:.4f} on {summary['eval_images']} photos, 95% CI "
            f"{low:.4f}-{high:.4f} (required {summary['min_accuracy']})",
        ),
        ("eval split", summary["eval_split"] or "the eval split"),
        ("champion", summary["champion"]),
        ("calibration", calibration),
        ("decision", summary["decision"]),
        ("model version", summary["model_version"] or "none registered"),
        ("endpoint", summary["endpoint"] or "none"),
        ("steps run", steps or "all cached"),
        ("report", summary["report"]),
    ]
    for label, value in rows:
        print(f"{label:<14} {value}")
    if summary["endpoint"]:
        print(f"serve it with  python -m pipeline.serve --state-dir {summary['state_dir']}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    failures: tuple[type[Exception], ...] = (UsageError, PipelineFailed)
    try:
        if args.command == "schedule" or not args.local:
            # The Vertex AI SDK takes seconds to import: only Vertex commands load it.
            from components.lib.targets.vertex import VertexError

            failures = (*failures, VertexError)
            return schedule(args) if args.command == "schedule" else submit(args)
        summary = run_local(args)
    except failures as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, UsageError) else 1
    except KeyboardInterrupt:
        local = args.command != "schedule" and args.local
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
