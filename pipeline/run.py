"""``python -m pipeline.run --local``: run the compiled pipeline on this machine with kfp.local.

The local target keeps its model registry, endpoints, pipeline root and cache under one state
folder; ``python -m pipeline.serve`` serves what a run deployed there.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import warnings
import webbrowser
from typing import Any

import yaml

from components.lib.demo_data import make_demo_dataset
from components.lib.registry import EndpointRegistry, resource_id
from pipeline.compile import compile_pipeline
from pipeline.progress import StepProgress

DEFAULT_STATE_DIR = os.environ.get("BEER_PIPELINE_STATE_DIR", ".vertex-local")
LOCAL_PROJECT = "local-project"
_PARAMETER_TYPES = {
    "STRING": str,
    "NUMBER_INTEGER": int,
    "NUMBER_DOUBLE": float,
    "BOOLEAN": lambda text: {"true": True, "false": False}[text.lower()],
}


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
            raise UsageError(f"--param {name}={text!r}: expected a {kind.lower()}") from None
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.run",
        description="Run the training pipeline. With --local it runs on this machine with "
        "kfp.local, registers the model in a local registry and deploys it to a local endpoint "
        "(serve it with `python -m pipeline.serve`). Without --data-uri the local run uses a "
        "small demo dataset made from scikit-image's sample photos (a smoke test, not a "
        "benchmark).",
    )
    parser.add_argument(
        "--local", action="store_true", help="run on this machine with kfp.local (required for now)"
    )
    parser.add_argument(
        "--data-uri",
        help="images as {train,eval}/<class>/<image>: gs://bucket/path or a folder "
        "(default: the offline demo dataset)",
    )
    parser.add_argument(
        "--min-accuracy", type=float, help="accuracy gate on the eval split (pipeline default 0.8)"
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any pipeline parameter, e.g. --param epochs=5 (repeatable)",
    )
    parser.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help="folder of the local registry, endpoints, pipeline root and cache "
        "(env BEER_PIPELINE_STATE_DIR, default %(default)s)",
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="run every step, even unchanged ones"
    )
    parser.add_argument("--verbose", action="store_true", help="stream kfp.local's full output")
    parser.add_argument(
        "--json", action="store_true", help="end stdout with one JSON line summarising the run"
    )
    parser.add_argument(
        "--open-report", action="store_true", help="open the evaluation report in a web browser"
    )
    return parser


def _run_id() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def run_local(args: argparse.Namespace) -> dict[str, Any]:
    """Run the pipeline with kfp.local and return the summary of the run."""
    import kfp.local
    from kfp import components

    state_dir = os.path.abspath(args.state_dir)
    spec_path = compile_pipeline(os.path.join(state_dir, "pipeline.yaml"))
    with open(spec_path) as file:
        parameters = pipeline_parameters(yaml.safe_load(file))
    arguments: dict[str, Any] = {"project": LOCAL_PROJECT}
    arguments.update(parse_params(args.param, parameters))
    if args.data_uri:
        arguments["data_uri"] = args.data_uri
    elif "data_uri" not in arguments:
        arguments["data_uri"] = make_demo_dataset(os.path.join(state_dir, "demo-data"))
        print(f"using the offline demo dataset at {arguments['data_uri']}", file=sys.stderr)
    if args.min_accuracy is not None:
        arguments["min_accuracy"] = args.min_accuracy
    arguments.update(target="local", local_state_dir=state_dir)

    kfp.local.init(
        runner=kfp.local.SubprocessRunner(use_venv=False),
        pipeline_root=os.path.join(state_dir, "pipeline_root"),
        enable_caching=not args.no_cache,
    )
    log_path = os.path.join(state_dir, "logs", f"run-{_run_id()}.log")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    pipeline = components.load_component_from_file(spec_path)
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
    return {
        "accuracy": outputs["accuracy"],
        "champion_accuracy": champion_accuracy if champion_accuracy >= 0 else None,
        "min_accuracy": values["min_accuracy"],
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
    champion = summary["champion_accuracy"]
    rows = [
        ("accuracy", f"{summary['accuracy']:.4f} (required {summary['min_accuracy']})"),
        ("champion", "none served" if champion is None else f"{champion:.4f} (served before)"),
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
    try:
        if not args.local:
            raise UsageError(
                "submitting to Vertex AI Pipelines is not available yet; add --local to run on "
                "this machine"
            )
        summary = run_local(args)
    except (UsageError, PipelineFailed) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, UsageError) else 1
    _print_summary(summary)
    if args.open_report:
        webbrowser.open(f"file://{summary['report']}")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
