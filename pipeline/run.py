"""``python -m pipeline.run``: submit the pipeline to Vertex AI, schedule it, or run it locally.

Without ``--local`` the freshly compiled pipeline is submitted to Vertex AI Pipelines
(``schedule`` makes it recurring, ``publish`` makes it a template). With ``--local`` it runs on
this machine with kfp.local; the local target keeps its model registry, endpoints, pipeline root
and cache under one state folder, and ``python -m pipeline.serve`` serves what a run deployed
there. This module is the command line; each job is its own module: the local run
(``run_local``), Vertex AI jobs and schedules (``run_vertex``), templates (``run_templates``),
the run's summary (``run_summary``), over the settings (``settings``) and pipeline arguments
(``arguments``) they share.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import webbrowser
from typing import Any

from components.lib.evaluation.rule import GateRule
from components.lib.targets.base import LOCAL, TARGETS
from components.lib.targets.local import default_state_dir
from pipeline.local_runner import RUNNERS, SUBPROCESS
from pipeline.pipeline import PIPELINE_NAME
from pipeline.run_local import PipelineFailed, local_job, run_local
from pipeline.run_summary import print_summary
from pipeline.run_vertex import run_vertex_command, vertex_job
from pipeline.settings import DEFAULT_CONFIG, ENV_PREFIX, SETTINGS, UsageError


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
        "dataset made from scikit-image's sample photos (a smoke test, not a benchmark: "
        "trained at its photos' 160 px with 3 fine-tuning epochs unless --param says otherwise).",
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
        "registers and deploys on Vertex AI (or the emulator at "
        "IMAGE_CLASSIFIER_VERTEX_EMULATOR_HOST) and needs the Vertex settings, the pipeline "
        "root's bucket mounted at IMAGE_CLASSIFIER_GCS_MOUNT_ROOT",
    )
    _add_pipeline_options(parser, with_defaults=True)
    parser.add_argument(
        "--wait", action="store_true", help="Vertex: follow the job; exit 1 unless it succeeds"
    )
    parser.add_argument(
        "--state-dir",
        default=default_state_dir(),
        help="folder of the local registry, endpoints, pipeline root and cache, and of the logs "
        "(Vertex commands too) (env IMAGE_CLASSIFIER_STATE_DIR, default %(default)s)",
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


def print_plan(args: argparse.Namespace) -> int:
    """``--plan``: what a run with these options would run and take from the cache, and why."""
    from kfp import components

    from pipeline import plan

    caching = args.caching is not False
    if args.local:
        state_dir, pipeline, _, arguments, root = local_job(args)
        result = plan.plan_local(pipeline.pipeline_spec, arguments, root, state_dir, caching)
    else:
        from pipeline.submit import preflight

        with tempfile.TemporaryDirectory() as spec_dir:
            settings, spec_path, arguments = vertex_job(args, spec_dir)
            preflight(settings)
            spec = components.load_component_from_file(spec_path).pipeline_spec
            result = plan.plan_vertex(
                spec, arguments, settings.project, settings.region, settings.pipeline_root, caching
            )
    print(json.dumps(result.to_json()) if args.json else result.table())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command in ("schedule", "publish") or not args.local:
            return run_vertex_command(args, print_plan)
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
    print_summary(summary)
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
