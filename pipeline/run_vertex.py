"""Vertex AI jobs of ``python -m pipeline.run``: submit a run, create or change a schedule, and
the one-line errors with the SDK's log and any traceback in a log file."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import yaml

from components.lib.targets.base import VERTEX
from pipeline.arguments import check_values, pipeline_arguments, pipeline_parameters
from pipeline.compile import compile_pipeline
from pipeline.run_templates import publish, published_template, read_spec, refuse_placeholder_images
from pipeline.settings import REQUIRED_SETTINGS, UsageError, run_id, vertex_settings

if TYPE_CHECKING:
    from pipeline.submit import VertexSettings


PAST_TENSE = {"pause": "paused", "resume": "resumed", "delete": "deleted"}


def vertex_job(args: argparse.Namespace, spec_dir: str) -> tuple[VertexSettings, str, dict]:
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
            spec_path, spec = published_template(template)
        else:
            spec = read_spec(spec_path)
        refuse_placeholder_images(spec, source)
    else:
        settings = vertex_settings(args)
        spec_path = compile_pipeline(
            os.path.join(spec_dir, "pipeline.yaml"), images=settings.images
        )
        with open(spec_path) as file:
            spec = yaml.safe_load(file)
    parameters = pipeline_parameters(spec)
    arguments = {"project": settings.project, "location": settings.region}
    arguments.update(pipeline_arguments(args, parameters))
    arguments["target"] = VERTEX
    check_values(parameters, arguments)
    return settings, spec_path, arguments


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


def submit(args: argparse.Namespace) -> int:
    """``python -m pipeline.run`` without --local: submit to Vertex AI Pipelines."""
    from pipeline.submit import console_url, preflight, submit_pipeline, wait_for

    with tempfile.TemporaryDirectory() as spec_dir:
        settings, spec_path, arguments = vertex_job(args, spec_dir)
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
        settings, spec_path, arguments = vertex_job(args, spec_dir)
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


def run_vertex_command(args: argparse.Namespace, plan: Callable[[argparse.Namespace], int]) -> int:
    """Publish, schedule, ``plan`` (``--plan``) or submit, with the SDK's log and any traceback
    in a log file, not the terminal: the terminal gets one line per outcome."""
    import logging

    from components.lib.targets.vertex import VertexError
    from pipeline.submit import SetupError, log_to_file
    from pipeline.templates import TemplateError

    args.log_path = os.path.abspath(os.path.join(args.state_dir, "logs", f"vertex-{run_id()}.log"))
    with log_to_file(args.log_path):
        try:
            if args.command == "publish":
                return publish(args)
            if args.command == "schedule":
                return schedule(args)
            return plan(args) if args.plan else submit(args)
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
