"""Canary review on the local target: the server's /metrics per deployed version, then
`python -m pipeline.canary` rolls back a canary that answers 5xx or is slower than its budget
and promotes a healthy one; the server samples requests for the drift monitor meanwhile."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from bench.serve_load import ServerProcess, server_process
from components.lib.monitoring.sampler import read_recent
from components.lib.targets.base import Serving
from components.lib.targets.canary import read_metrics_url
from components.lib.targets.local import EndpointRegistry, ModelRegistry
from tests.conftest import ROOT
from tests.serving_models import INSTANCES, failing_model

pytestmark = pytest.mark.slow  # a server process with TensorFlow: seconds

PROJECT, LOCATION = "local-project", "europe-west1"
ENDPOINT = "beer-endpoint"
PREDICT = f"/v1/projects/{PROJECT}/locations/{LOCATION}/endpoints/{ENDPOINT}:predict"


def _deploy(state: Path, model_dir: Path, share: int) -> str:
    version = ModelRegistry(str(state), PROJECT, LOCATION).upload_version(
        "beer", str(model_dir), {"accuracy": 1.0}, {}
    )
    endpoints = EndpointRegistry(str(state), PROJECT, LOCATION, Serving(traffic_percentage=share))
    endpoints.deploy(ENDPOINT, version)
    return f"beer-v{version.version_id}"


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory, colour_models: dict[str, Path]) -> Path:
    state = tmp_path_factory.mktemp("state")
    _deploy(state, colour_models["v1"], 100)
    return state


@pytest.fixture(scope="module")
def server(state: Path) -> Iterator[ServerProcess]:
    command = [sys.executable, "-m", "pipeline.serve", "--port", "0", "--state-dir", str(state)]
    command += ["--sample-interval-s", "0.3", "--sample-size", "16"]
    with server_process(command, state / "serve.log") as started:
        yield started


def _send(server: ServerProcess, count: int) -> list[int]:
    statuses = []
    for index in range(count):
        body = {"instances": [INSTANCES[index % len(INSTANCES)]]}
        statuses.append(requests.post(server.url + PREDICT, json=body, timeout=60).status_code)
    return statuses


def _review(server: ServerProcess, state: Path, *options: str) -> dict:
    command = [sys.executable, "-m", "pipeline.canary", "--state-dir", str(state)]
    command += ["--endpoint", ENDPOINT, "--metrics-url", f"{server.url}/metrics"]
    command += ["--min-requests", "10", "--json", *options]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _record(state: Path) -> dict:
    return EndpointRegistry(str(state), PROJECT, LOCATION).get(ENDPOINT)


def _copy(model: Path, where: Path) -> Path:
    return Path(shutil.copytree(model, where))


def test_a_canary_that_answers_5xx_is_rolled_back(
    server: ServerProcess, state: Path, tmp_path: Path
) -> None:
    canary = _deploy(state, failing_model(tmp_path / "failing"), 50)
    statuses = _send(server, 40)
    assert 500 in statuses and 200 in statuses
    served = read_metrics_url(f"{server.url}/metrics")
    assert served[canary].server_errors == served[canary].requests == statuses.count(500)
    decision = _review(server, state)
    assert decision["action"] == "rollback"
    assert "server errors" in decision["reasons"][0]
    record = _record(state)
    assert record["trafficSplit"] == {"beer-v1": 100}
    assert [d["id"] for d in record["deployedModels"]] == ["beer-v1"]
    assert record["canaryReviews"][-1]["action"] == "rollback"
    assert record["canaryReviews"][-1]["canary"] == canary
    assert set(_send(server, 10)) == {200}


def test_a_canary_slower_than_its_budget_is_rolled_back(
    server: ServerProcess, state: Path, tmp_path: Path, colour_models: dict[str, Path]
) -> None:
    canary = _deploy(state, _copy(colour_models["v2"], tmp_path / "slow"), 50)
    _send(server, 40)
    decision = _review(server, state, "--max-latency-p95-ms", "0.001")
    assert decision["action"] == "rollback"
    assert "over the budget of 0 ms" in decision["reasons"][0]
    assert decision["canary"]["deployed_model_id"] == canary
    assert _record(state)["trafficSplit"] == {"beer-v1": 100}


def test_a_healthy_canary_is_promoted_and_a_dry_run_changes_nothing(
    server: ServerProcess, state: Path, tmp_path: Path, colour_models: dict[str, Path]
) -> None:
    canary = _deploy(state, _copy(colour_models["v2"], tmp_path / "healthy"), 50)
    assert _review(server, state)["action"] == "wait"  # no request yet
    _send(server, 40)
    assert _review(server, state, "--dry-run")["action"] == "promote"
    assert _record(state)["trafficSplit"] == {"beer-v1": 50, canary: 50}
    decision = _review(server, state)
    assert decision["action"] == "promote"
    record = _record(state)
    assert record["trafficSplit"] == {canary: 100}
    assert [d["id"] for d in record["deployedModels"]] == [canary]
    assert _review(server, state) == {"action": "none"}


def test_the_server_samples_each_deployed_version(server: ServerProcess, state: Path) -> None:
    """Windows are written every 0.3 s, at most 16 predictions each, per deployed version."""
    _send(server, 20)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not list((state / "monitoring").glob("*/*.npz")):
        time.sleep(0.2)
    folders = {path.parent.name for path in (state / "monitoring").glob("*/*.npz")}
    assert "beer-v1" in folders
    sample, windows = read_recent(str(state / "monitoring" / "beer-v1"), 1000)
    assert windows >= 1 and len(sample.confidences) >= 1
    assert sample.embeddings.shape == (0, 0)  # the colour models have no embedding output
    assert np.all(sample.confidences <= 1)
    assert not list((state / "monitoring").glob("*/*-images"))  # no image unless asked


def test_review_refuses_an_unknown_endpoint_in_one_line(state: Path) -> None:
    command = [sys.executable, "-m", "pipeline.canary", "--state-dir", str(state)]
    done = subprocess.run(
        [*command, "--endpoint", "nope"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert (
        done.stderr.startswith("error: no local endpoint 'nope'") and done.stderr.count("\n") == 1
    )


def test_canary_and_monitor_ask_for_the_endpoint_by_name(capsys: pytest.CaptureFixture) -> None:
    """Endpoints are named after their data: there is no default one to review."""
    from pipeline import canary, monitor

    for module in (canary, monitor):
        with pytest.raises(SystemExit) as exited:
            module.parse_args([])
        assert exited.value.code == 2
        assert capsys.readouterr().err.startswith("error: --endpoint: name the endpoint")
