"""Vertex commands fail fast and clearly: what is checked before any call, and one line when the
service cannot be reached, with the detail in a log file."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from pipeline.run import main
from tests.conftest import ROOT, VERTEX_PROJECT, VERTEX_SETTINGS
from tests.vertex_emulator import VertexEmulator

SETTINGS = VERTEX_SETTINGS
pytestmark = pytest.mark.usefixtures("no_ambient_vertex_settings", "compiled_once")
COMMANDS = {
    "submit": [*SETTINGS],
    "schedule": ["schedule", "--cron", "0 3 * * 1", *SETTINGS],
    "schedule list": ["schedule", "list", *SETTINGS[:4]],
}


def run_isolated(
    *args: str, tmp_path: Path, credentials: Path | None = None
) -> tuple[subprocess.CompletedProcess, float]:
    """``python -m pipeline.run ARGS`` with no credentials but ``credentials``, no gcloud
    configuration, no ambient settings; returns the result and its wall-clock seconds."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("IMAGE_CLASSIFIER_", "GOOGLE_", "CLOUDSDK_"))
    }
    env.update(
        HOME=str(tmp_path / "home"),
        CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),
        IMAGE_CLASSIFIER_CONFIG=str(tmp_path / "absent.yaml"),
        IMAGE_CLASSIFIER_STATE_DIR=str(tmp_path / "state"),
        PYTHONPATH=str(ROOT),
    )
    if credentials:
        env["GOOGLE_APPLICATION_CREDENTIALS"] = str(credentials)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.run", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result, time.monotonic() - started


NO_CREDENTIALS = (
    "error: no Google Cloud credentials: run `gcloud auth application-default login`, or set "
    "GOOGLE_APPLICATION_CREDENTIALS to a service account key file"
)


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No key file and no gcloud configuration, as on a fresh machine."""
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))


@pytest.mark.slow
def test_cli_without_credentials_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result, seconds = run_isolated(*COMMANDS["submit"], tmp_path=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [NO_CREDENTIALS]
    assert result.stdout == ""
    print(f"{seconds:.1f} s, most of it importing the SDK")


TEMPLATES = "https://europe-west4-kfp.pkg.dev/test-project/pipelines"
WITHOUT_NETWORK_FIRST = {
    **COMMANDS,
    # Their first request downloads or uploads a template, not a Vertex AI call.
    "template": [*SETTINGS[:6], "--template", f"{TEMPLATES}/image-classifier-training@v1"],
    "publish": ["publish", "--repository", TEMPLATES, *SETTINGS[6:8]],
}


@pytest.mark.parametrize("command", list(WITHOUT_NETWORK_FIRST))
def test_no_credentials_is_one_line_and_exit_2_for_every_command(
    no_credentials: None, capsys: pytest.CaptureFixture, command: str
) -> None:
    started = time.monotonic()
    assert main(WITHOUT_NETWORK_FIRST[command]) == 2
    assert capsys.readouterr().err.splitlines() == [NO_CREDENTIALS]
    assert time.monotonic() - started < 30


def test_vertex_batch_prediction_without_credentials_is_one_line_and_exit_2(
    no_credentials: None, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    from pipeline import predict

    argv = ["beer-classifier", "gs://beer-photos/new", "-o", str(tmp_path / "out.jsonl")]
    argv += ["--target", "vertex", *SETTINGS[:4], "--staging", "gs://beer-batch/s"]
    assert predict.main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [NO_CREDENTIALS]


def test_a_credentials_file_that_does_not_load_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    broken = tmp_path / "key.json"
    broken.write_text("{not json")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(broken))
    assert main(SETTINGS) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: the credentials file {broken} (GOOGLE_APPLICATION_CREDENTIALS)")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _check_unreachable_line(line: str, message: str, tmp_path: Path) -> None:
    assert line.startswith(f"error: {message}"), line
    log = Path(line.rsplit("(details: ", 1)[1].rstrip(")"))
    assert log.is_relative_to(tmp_path / "state/logs")
    assert "Traceback" in log.read_text()


@pytest.mark.slow
def test_cli_with_an_unreachable_service_is_one_line_and_exit_1(
    tmp_path: Path, service_account_key: Path
) -> None:
    port = _closed_port()
    result, seconds = run_isolated(
        *SETTINGS,
        "--api-endpoint",
        f"127.0.0.1:{port}",
        tmp_path=tmp_path,
        credentials=service_account_key,
    )
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.splitlines()
    message = f"cannot reach Vertex AI at 127.0.0.1:{port}: Connection refused"
    _check_unreachable_line(line, message, tmp_path)
    assert result.stdout == ""
    print(f"{seconds:.1f} s, most of it importing the SDK")


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("127.0.0.1:{port}", "cannot reach Vertex AI at 127.0.0.1:{port}: Connection refused"),
        (
            "vertex-api.invalid",
            "cannot reach Vertex AI at vertex-api.invalid:443: the name does not resolve (DNS: ",
        ),
    ],
)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_unreachable_service_fails_at_once_for_every_command(
    monkeypatch: pytest.MonkeyPatch,
    service_account_key: Path,
    capsys: pytest.CaptureFixture,
    tmp_path: Path,
    command: str,
    endpoint: str,
    message: str,
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(service_account_key))
    port = _closed_port()
    started = time.monotonic()
    assert main([*COMMANDS[command], "--api-endpoint", endpoint.format(port=port)]) == 1
    assert time.monotonic() - started < 30
    [line] = capsys.readouterr().err.splitlines()
    _check_unreachable_line(line, message.format(port=port), tmp_path)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["schedule", "--cron", "every monday", *SETTINGS], "cron 'every monday' is not a 5-field"),
        (["schedule", "--cron", "0 25 * * 1", *SETTINGS], "cron '0 25 * * 1': hour '25'"),
        (
            [*SETTINGS[:2], "--region", "mars-1", *SETTINGS[4:]],
            "region 'mars-1' is not a Vertex AI region",
        ),
        ([*SETTINGS, "--experiment", "My Experiment"], "experiment 'My Experiment': lowercase"),
    ],
)
def test_bad_cron_region_and_experiment_are_refused_before_any_call(
    vertex_emulator: VertexEmulator, capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    assert main(argv) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert message in line
    assert vertex_emulator.requests == []


def test_an_experiment_that_cannot_be_used_is_a_clear_message(
    vertex_emulator: VertexEmulator, capsys: pytest.CaptureFixture
) -> None:
    vertex_emulator.fail("GetMetadataStore", grpc.StatusCode.PERMISSION_DENIED)
    assert main([*SETTINGS, "--experiment", "beer-runs"]) == 1
    [line] = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert line.startswith(
        "error: experiment 'beer-runs' could not be found or created in test-project/europe-west4 ("
    )
    assert "nothing was submitted" in line
    assert vertex_emulator.calls("CreatePipelineJob") == []


def test_the_sdk_logs_to_the_log_file_not_the_terminal(
    vertex_emulator: VertexEmulator, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    assert main(SETTINGS) == 0
    captured = capsys.readouterr()
    number = vertex_emulator.project_number(VERTEX_PROJECT)
    assert captured.out.splitlines()[0].startswith(f"submitted      projects/{number}/")
    assert len(captured.out.splitlines()) == 2
    [log] = (tmp_path / "state/logs").glob("vertex-*.log")
    assert "PipelineJob created" in log.read_text()
