"""Submit the compiled pipeline to Vertex AI Pipelines and manage its schedules.

Plain functions over the aiplatform SDK, called by ``python -m pipeline.run``; every API call
goes through ``call_vertex`` (bounded retries, clear permission errors). What can be checked
without the network is checked first (``check_region``, ``check_cron``, credentials), then
``preflight`` makes sure the service answers at all, within seconds, so that a machine without
a network learns so at once instead of through minutes of SDK retries.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from google.api_core import exceptions
from google.cloud import aiplatform, aiplatform_v1
from google.cloud.aiplatform import initializer
from google.cloud.aiplatform.constants.base import SUPPORTED_REGIONS
from google.protobuf import field_mask_pb2

from components.images import ImageSet
from components.lib.storage import (
    PROBE_TIMEOUT_S,
    StorageSetupError,
    check_credentials_file,
    reach_problem,
    redact_text,
)
from components.lib.targets.vertex import VertexError, call_vertex, use_emulator_if_set

IAM_ENDPOINT_ENV = "IMAGE_CLASSIFIER_IAM_ENDPOINT"
"""Base URL of the IAM API (default https://iam.googleapis.com), e.g. an emulator's."""
ACT_AS = "iam.serviceAccounts.actAs"
CREATE_TIMEOUT_S = 60.0
"""How long one request that creates a job or schedule may take."""
PIPELINE_REGIONS = sorted(SUPPORTED_REGIONS - {"global"})
_CRON_FIELDS = (
    ("minute", 0, 59, ""),
    ("hour", 0, 23, ""),
    ("day-of-month", 1, 31, ""),
    ("month", 1, 12, "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC"),
    ("day-of-week", 0, 7, "SUN MON TUE WED THU FRI SAT"),
)
_CRON_ITEM = re.compile(r"(\*|(\w+)(?:-(\w+))?)(?:/(\d+))?")
_CRON_TIME_ZONE = re.compile(r"(?:CRON_TZ|TZ)=\S+\s+")


class SetupError(Exception):
    """Something to set up on this machine before any call can work (credentials)."""


@dataclass(frozen=True)
class VertexSettings:
    """Where and as whom a pipeline job runs."""

    project: str
    region: str
    pipeline_root: str | None
    service_account: str | None = None
    network: str | None = None
    experiment: str | None = None
    image: str | None = None
    api_endpoint: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    cpu_image: str | None = None
    light_image: str | None = None
    serving_image: str | None = None

    @property
    def images(self) -> ImageSet:
        """The steps' images: ``image`` (GPU) and the others beside it unless given."""
        return ImageSet.beside(
            self.image or "",
            cpu=self.cpu_image or "",
            light=self.light_image or "",
            serving=self.serving_image or "",
        )


def check_region(region: str) -> str | None:
    """What is wrong with ``region`` as a Vertex AI Pipelines region, or None."""
    if region in PIPELINE_REGIONS:
        return None
    close = difflib.get_close_matches(region, PIPELINE_REGIONS, n=3)
    hint = f"did you mean {' or '.join(close)}?" if close else "e.g. us-central1, europe-west4"
    return (
        f"region {region!r} is not a Vertex AI region known to the installed "
        f"google-cloud-aiplatform; {hint}"
    )


def check_cron(cron: str) -> str | None:
    """What is wrong with ``cron`` as a Vertex AI schedule, or None.

    Vertex AI takes unix-cron: five fields (minute hour day-of-month month day-of-week), each
    ``*``, a value, a range or a list of them, with an optional ``/step``, after an optional
    ``TZ=<IANA zone>`` or ``CRON_TZ=...``.
    """
    expression = _CRON_TIME_ZONE.sub("", cron.strip(), count=1)
    fields = expression.split()
    if len(fields) != len(_CRON_FIELDS):
        return (
            f"cron {cron!r} is not a 5-field cron expression (minute hour day-of-month month "
            'day-of-week), e.g. "0 3 * * 1": Mondays at 03:00 UTC'
        )
    for text, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        for item in text.split(","):
            match = _CRON_ITEM.fullmatch(item.upper())
            values = [v for v in (match.group(2), match.group(3)) if v] if match else []
            if not match or not all(_cron_value(v, low, high, names) for v in values):
                return f"cron {cron!r}: {name} {item!r} is not * or a value in {low}-{high}"
    return None


def _cron_value(text: str, low: int, high: int, names: str) -> bool:
    if text.isdigit():
        return low <= int(text) <= high
    return text in names.split()


def console_url(settings: VertexSettings, job_id: str) -> str:
    return (
        f"https://console.cloud.google.com/vertex-ai/locations/{settings.region}/pipelines/runs/"
        f"{job_id}?project={settings.project}"
    )


def check_credentials() -> None:
    """Make sure credentials are there, without the network; SetupError says how to get some.

    The same sources as ``google.auth.default``, in its order: a key file
    (``storage.check_credentials_file``), then the metadata server of a Google Cloud machine
    (only trusted to exist on one).
    """
    from google.auth.compute_engine import _metadata

    try:
        if check_credentials_file():
            return
    except StorageSetupError as error:
        raise SetupError(str(error)) from None
    if os.environ.get("K_SERVICE") or _metadata.detect_gce_residency_linux():
        return  # a Google Cloud machine: its attached service account
    raise SetupError(
        "no Google Cloud credentials: run `gcloud auth application-default login`, or set "
        "GOOGLE_APPLICATION_CREDENTIALS to a service account key file"
    )


def api_address(settings: VertexSettings) -> tuple[str, int]:
    """(host, port) of the Vertex AI API that the SDK will call."""
    endpoint = (
        settings.api_endpoint
        or initializer.global_config.api_endpoint
        or f"{settings.region}-aiplatform.googleapis.com"
    )
    host, _, port = endpoint.rpartition(":")
    return (host, int(port)) if host and port.isdigit() else (endpoint, 443)


def check_reachable(service: str, host: str, port: int, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """VertexError saying what could not be reached and why (``storage.reach_problem``)."""
    if problem := reach_problem(service, host, port, timeout_s):
        raise VertexError(problem)


def check_caller() -> None:
    """Credentials before any call to Google Cloud (none for an emulator at
    ``IMAGE_CLASSIFIER_VERTEX_EMULATOR_HOST``): every CLI path calls this before its first
    request."""
    if not use_emulator_if_set():
        check_credentials()


def preflight(settings: VertexSettings, act_as: dict[str, str] | None = None) -> None:
    """What must hold before the first API call: credentials, an API that answers, and the
    caller's ``iam.serviceAccounts.actAs`` on each service account of ``act_as`` (account ->
    what runs as it)."""
    check_caller()
    if settings.api_endpoint:
        aiplatform.init(api_endpoint=settings.api_endpoint)
    check_reachable("Vertex AI", *api_address(settings))
    if act_as:
        check_act_as(act_as)


def check_act_as(accounts: dict[str, str]) -> None:
    """SetupError naming the missing binding for each service account the caller may not act
    as, asked of IAM (``serviceAccounts.testIamPermissions``, which needs no permission)."""
    import requests
    from google.auth.transport.requests import AuthorizedSession

    use_emulator_if_set()
    session = AuthorizedSession(initializer.global_config.credentials)  # the SDK's own
    base = os.environ.get(IAM_ENDPOINT_ENV, "https://iam.googleapis.com").rstrip("/")
    missing = []
    for account, runs_as in accounts.items():
        url = f"{base}/v1/projects/-/serviceAccounts/{account}:testIamPermissions"
        try:
            reply = session.post(url, json={"permissions": [ACT_AS]}, timeout=PROBE_TIMEOUT_S)
        except requests.RequestException as error:
            raise VertexError(f"cannot ask IAM about {account}: {_first_line(error)}") from None
        if reply.status_code == 404:
            missing.append(f"service account {account} ({runs_as}) does not exist")
        elif not reply.ok:
            raise VertexError(f"IAM answered {reply.status_code} about {account}: {reply.text}")
        elif ACT_AS not in reply.json().get("permissions", []):
            missing.append(
                f"you may not act as {account} ({runs_as}): grant it with `gcloud iam "
                f"service-accounts add-iam-policy-binding {account} --member=user:YOU "
                "--role=roles/iam.serviceAccountUser` (docs/vertex-iam.md)"
            )
    if missing:
        raise SetupError("; ".join(missing))


class _RedactingFormatter(logging.Formatter):
    """Log records with the URIs in them redacted: the SDK logs the job's parameters."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


@contextlib.contextmanager
def log_to_file(path: str) -> Iterator[None]:
    """Send every log record (the SDK's included) and warning to ``path``, none to the terminal.

    The SDK gives its loggers their own stdout handlers unless a stream handler is already in
    place; with this file handler on the root they add none, and those already added are
    detached for the duration. google-api-core stops the ``google`` logger from propagating
    unless it is configured: a level configures it, and it propagates here.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = logging.FileHandler(path, delay=True)
    handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    detached = [
        (logger, stream)
        for logger in list(logging.Logger.manager.loggerDict.values())
        if isinstance(logger, logging.Logger)
        for stream in logger.handlers
        if type(stream) is logging.StreamHandler
    ]
    for logger, stream in detached:
        logger.removeHandler(stream)
    google = logging.getLogger("google")
    saved = (root.level, google.level, google.propagate)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    google.setLevel(logging.INFO)
    google.propagate = True
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        root.level, google.level, google.propagate = saved
        handler.close()
        for logger, stream in detached:
            logger.addHandler(stream)


def _first_line(error: BaseException | str) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _job(
    settings: VertexSettings,
    spec_path: str,
    display_name: str,
    parameter_values: dict[str, Any],
    enable_caching: bool | None,
) -> aiplatform.PipelineJob:
    return aiplatform.PipelineJob(
        display_name=display_name,
        template_path=spec_path,
        pipeline_root=settings.pipeline_root,
        parameter_values=parameter_values,
        enable_caching=enable_caching,
        labels=settings.labels or None,
        project=settings.project,
        location=settings.region,
    )


def submit_pipeline(
    settings: VertexSettings,
    spec_path: str,
    display_name: str,
    parameter_values: dict[str, Any],
    enable_caching: bool | None,
) -> aiplatform.PipelineJob:
    """Create a pipeline job from the compiled spec; ``enable_caching`` None keeps each task's
    own setting, False turns caching off for every task."""
    job = _job(settings, spec_path, display_name, parameter_values, enable_caching)

    def recover() -> aiplatform_v1.PipelineJob | None:
        """The job whose creation answer was lost: the retry sends the same job id, so the
        job that got through is found by it (a second create would be refused)."""
        name = f"projects/{settings.project}/locations/{settings.region}/pipelineJobs/{job.job_id}"
        try:
            job._gca_resource = job.api_client.get_pipeline_job(name=name)
        except exceptions.NotFound:
            return None
        return job._gca_resource

    try:
        call_vertex(
            f"submit pipeline job to {settings.project}/{settings.region}",
            lambda: job.submit(
                service_account=settings.service_account,
                network=settings.network,
                experiment=settings.experiment,
                create_request_timeout=CREATE_TIMEOUT_S,
            ),
            recover=recover,
        )
    except (RuntimeError, ValueError) as error:
        if isinstance(error, VertexError) or not settings.experiment:
            raise
        # The SDK checks the experiment before creating the job and records the job in it
        # after: say which of the two failed, and why.
        cause = _first_line(error.__cause__ or error)
        if not job._gca_resource.name:
            raise VertexError(
                f"experiment {settings.experiment!r} could not be found or created in "
                f"{settings.project}/{settings.region} ({cause}); nothing was submitted. Check "
                "the name, the region and that you have roles/aiplatform.user"
            ) from error
        raise VertexError(
            f"submitted {job.resource_name}, but it could not be recorded in experiment "
            f"{settings.experiment!r} ({cause})"
        ) from error
    return job


def wait_for(job: aiplatform.PipelineJob) -> None:
    """Follow ``job`` to its end; VertexError says why when it did not succeed."""
    try:
        job.wait()
    except RuntimeError as error:
        raise VertexError(f"pipeline job {job.resource_name} {job.state.name}: {error}") from None


def _schedules(settings: VertexSettings, display_name: str | None) -> list:
    return call_vertex(
        "list schedules",
        lambda: aiplatform.PipelineJobSchedule.list(
            filter=f'display_name="{display_name}"' if display_name else None,
            project=settings.project,
            location=settings.region,
        ),
    )


def upsert_schedule(
    settings: VertexSettings,
    spec_path: str,
    display_name: str,
    parameter_values: dict[str, Any],
    enable_caching: bool | None,
    cron: str,
    max_concurrent: int,
) -> tuple[str, bool]:
    """Create the schedule named ``display_name``, or update it if it exists.

    Updating replaces the cron, the concurrency and the job it starts (spec, parameters,
    service account, network, labels), so re-running the command is how a schedule is changed.
    Returns the schedule's resource name and whether it was created.
    """
    job = _job(settings, spec_path, display_name, parameter_values, enable_caching)
    existing = _schedules(settings, display_name)
    if not existing:
        schedule = aiplatform.PipelineJobSchedule(pipeline_job=job, display_name=display_name)
        call_vertex(
            f"create schedule {display_name!r}",
            lambda: schedule.create(
                cron=cron,
                max_concurrent_run_count=max_concurrent,
                service_account=settings.service_account,
                network=settings.network,
                create_request_timeout=CREATE_TIMEOUT_S,
            ),
        )
        return schedule.resource_name, True
    if len(existing) > 1:
        raise VertexError(
            f"{len(existing)} schedules are named {display_name!r}; delete the extra ones "
            "(schedule list, schedule delete) so updates have one target"
        )
    updated = aiplatform_v1.Schedule(
        name=existing[0].resource_name,
        display_name=display_name,
        cron=cron,
        max_concurrent_run_count=max_concurrent,
        create_pipeline_job_request=aiplatform_v1.CreatePipelineJobRequest(
            parent=f"projects/{settings.project}/locations/{settings.region}",
            pipeline_job=_scheduled_job(job, settings, existing[0]),
        ),
    )
    mask = field_mask_pb2.FieldMask(
        paths=["cron", "max_concurrent_run_count", "create_pipeline_job_request"]
    )
    call_vertex(
        f"update schedule {display_name!r}",
        lambda: existing[0].api_client.update_schedule(schedule=updated, update_mask=mask),
    )
    return existing[0].resource_name, False


def _scheduled_job(
    job: aiplatform.PipelineJob, settings: VertexSettings, existing: Any
) -> aiplatform_v1.PipelineJob:
    """The job an updated schedule starts: the SDK's own request for ``job`` (spec, runtime
    config, template URI and metadata, encryption spec), as a new schedule's, with the
    service account and network given now, or else the schedule's: UpdateSchedule cannot
    unset a field, so none is sent empty."""
    pipeline_job = aiplatform_v1.PipelineJob(job._gca_resource)
    before = existing.gca_resource.create_pipeline_job_request.pipeline_job
    pipeline_job.labels = settings.labels
    pipeline_job.service_account = settings.service_account or before.service_account
    pipeline_job.network = settings.network or before.network
    if not pipeline_job.encryption_spec.kms_key_name:
        pipeline_job.encryption_spec = before.encryption_spec
    return pipeline_job


def list_schedules(settings: VertexSettings) -> list[dict[str, str]]:
    """Every pipeline schedule of the project and region: name, display name, state, cron."""
    return [
        {
            "name": s.resource_name,
            "display_name": s.display_name,
            "state": s.state.name,
            "cron": s.cron,
        }
        for s in _schedules(settings, None)
    ]


def change_schedule(settings: VertexSettings, display_name: str, action: str) -> str:
    """``pause``, ``resume`` or ``delete`` the schedule named ``display_name``."""
    found = _schedules(settings, display_name)
    if not found:
        raise VertexError(
            f"no schedule named {display_name!r} in {settings.project}/{settings.region}; "
            "`schedule list` shows the existing ones"
        )
    for schedule in found:
        call_vertex(f"{action} schedule {schedule.resource_name}", getattr(schedule, action))
    return ", ".join(s.resource_name for s in found)
