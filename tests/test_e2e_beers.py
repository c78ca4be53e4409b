"""End to end on the real beer photos: local pipeline, accuracy gate, local endpoint over HTTP.

The photos are those of a real upload: the beer photos with one unusable file of every kind
mixed in, and five photos stored in other formats. The first run must skip and report the bad
files, read the others, and still pass the gate; the later runs train again on the same files.
"""

from __future__ import annotations

import base64
import html
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from bench.serve_load import server_process
from tests.conftest import (
    add_bad_files,
    convert_photos,
    eval_photos,
    predict_in_batches,
    run_cli,
)

ENDPOINT = "projects/local-project/locations/europe-west1/endpoints/beers-classifier-endpoint"

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Upload:
    """A copy of the beer photos with bad files and converted photos mixed in."""

    root: Path
    bad: dict[str, str]  # kind -> path in the layout
    converted: dict[str, str]  # conversion -> file name in train/0chimayblue


def run_pipeline(state: Path, data: Path, *args: str) -> subprocess.CompletedProcess:
    result = run_cli("--local", "--json", "--state-dir", str(state), "--data-uri", str(data), *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def summary_of(result: subprocess.CompletedProcess) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("beer-state")


@pytest.fixture(scope="module")
def upload(tmp_path_factory: pytest.TempPathFactory, beer_data_dir: Path) -> Upload:
    root = tmp_path_factory.mktemp("upload") / "beers"
    shutil.copytree(beer_data_dir, root)
    converted = convert_photos(root / "train" / "0chimayblue")
    return Upload(root, add_bad_files(root, "0chimayblue", "1orval"), converted)


@pytest.fixture(scope="module")
def first_result(state: Path, upload: Upload) -> subprocess.CompletedProcess:
    return run_pipeline(state, upload.root)


@pytest.fixture(scope="module")
def first_run(first_result: subprocess.CompletedProcess) -> dict:
    return summary_of(first_result)


@pytest.fixture(scope="module")
def endpoint_url(state: Path, first_run: dict) -> Iterator[str]:
    command = [sys.executable, "-m", "pipeline.serve", "--port", "0", "--state-dir", str(state)]
    with server_process(command, state / "serve.log") as server:
        yield f"{server.url}/v1/{ENDPOINT}:predict"


def test_model_passes_the_gate_and_is_deployed(first_run: dict) -> None:
    assert first_run["accuracy"] >= 0.97
    assert first_run["deployed"] is True
    assert first_run["champion_accuracy"] is None
    report = Path(first_run["report"]).read_text()
    assert 'id="confusion-matrix"' in report and 'id="training-curves"' in report
    assert "serving within its budgets" in first_run["decision"]
    assert first_run["model_version"] == (
        "projects/local-project/locations/europe-west1/models/beers-classifier@1"
    )
    assert first_run["endpoint"] == ENDPOINT


def test_the_model_was_served_as_the_endpoint_serves_it_before_it_was_registered(
    state: Path, first_result: subprocess.CompletedProcess, first_run: dict
) -> None:
    """Infra validation: every eval photo through the server's predict route, its figures in
    the summary, the JSON, the report and the evaluation the registry keeps."""
    serving = first_run["serving"]
    assert serving["photos_checked"] == first_run["eval_images"] == 97
    assert 0 < serving["latency_p50_ms"] <= serving["latency_p95_ms"] < 1000
    assert 0 < serving["concurrent_latency_p50_ms"] <= serving["concurrent_latency_p95_ms"]
    assert serving["concurrent_clients"] == 4
    assert 1 < serving["model_mb"] < 100 and 0 < serving["load_seconds"] < 300
    assert "infra-validate" in first_run["step_seconds"]
    assert first_run["metrics"]["latency_p95_ms"] == serving["latency_p95_ms"]
    printed = [line for line in first_result.stdout.splitlines() if line.startswith("serving ")]
    assert printed and f"/{serving['latency_p95_ms']:.1f} ms at 1 client" in printed[0]
    report = Path(first_run["report"]).read_text()
    assert 'id="serving"' in report
    assert f"p95 {serving['latency_p95_ms']:g} ms (budget 1000 ms)" in report
    model = json.loads((state / "models/beers-classifier/model.json").read_text())
    [evaluation] = model["versions"][0]["evaluations"]
    assert evaluation["metadata"]["serving"] == serving


def test_bad_files_mixed_into_the_photos_are_skipped_and_reported(
    state: Path, upload: Upload, first_result: subprocess.CompletedProcess
) -> None:
    """The gate test above shows that skipping them cost no accuracy."""
    reasons = {
        "corrupt": "cannot be decoded",
        "truncated": "cannot be decoded",
        "text": "not an image file",
        "notes": "not an image file",
        "tiny": "smaller than the minimum image size",
        "copy": "the same image again",
        "leaked": "also in the eval split",
    }
    lines = first_result.stderr.splitlines()
    for name, path in upload.bad.items():
        assert any(reasons[name] in line and path in line for line in lines), (name, path)
    assert any("converted, EXIF orientation" in line for line in lines)
    reports = list((state / "pipeline_root").rglob("validate-data/report"))
    text = reports[0].read_text()
    assert len(reports) == 1 and all(f"`{path}`" in text for path in upload.bad.values())
    assert all(f"`train/0chimayblue/{name}`" in text for name in upload.converted.values())


def test_endpoint_classifies_the_eval_photos(
    endpoint_url: str, upload: Upload, first_run: dict
) -> None:
    photos = eval_photos(upload.root)
    predicted = []
    for body, _ in predict_in_batches(endpoint_url, photos):
        assert body["modelVersionId"] == "1"
        for prediction in body["predictions"]:
            assert len(prediction["PROBABILITIES"]) == 5
            assert prediction["CLASSES"] == max(
                range(5), key=prediction["PROBABILITIES"].__getitem__
            )
        predicted += [p["CLASSES"] for p in body["predictions"]]

    correct = sum(p == label for p, (_, label) in zip(predicted, photos, strict=True))
    assert correct / len(photos) >= 0.90
    assert correct / len(photos) == pytest.approx(first_run["accuracy"])


def test_gate_holds_when_the_bar_is_above_the_model(
    state: Path, upload: Upload, first_run: dict, endpoint_url: str
) -> None:
    endpoint_record = state / "endpoints" / "beers-classifier-endpoint.json"
    before = endpoint_record.read_text()

    if first_run["accuracy"] > 0.99:
        pytest.skip("a perfect model leaves no bar above it: min_accuracy is at most 1")
    bar = str(first_run["accuracy"] + 0.01)
    second = summary_of(run_pipeline(state, upload.root, "--min-accuracy", bar))

    assert second["deployed"] is False and second["model_version"] is None
    assert f"< required {first_run['accuracy'] + 0.01:.4f}" in second["decision"]
    assert second["accuracy"] == first_run["accuracy"]
    assert second["champion_accuracy"] == first_run["accuracy"], "the champion is the same model"
    assert set(second["step_seconds"]) == {
        "check-parameters",
        "fingerprint-data",
        "evaluate-model",
        "infra-validate",
        "report-not-deployed",
    }, "download, preprocess and train are cached on unchanged data; the fingerprint, "
    "evaluate and infra validation never are"
    model = json.loads((state / "models/beers-classifier/model.json").read_text())
    assert [v["versionId"] for v in model["versions"]] == ["1"]
    assert endpoint_record.read_text() == before
    photo = next(iter(eval_photos(upload.root)))[0]
    instances = [{"bytes": {"b64": base64.b64encode(photo.read_bytes()).decode()}}]
    response = requests.post(endpoint_url, json={"instances": instances}, timeout=60)
    assert response.status_code == 200 and response.json()["modelVersionId"] == "1"


def test_a_latency_budget_too_low_holds_the_model_back(
    state: Path, upload: Upload, first_run: dict
) -> None:
    endpoint_record = state / "endpoints" / "beers-classifier-endpoint.json"
    before = endpoint_record.read_text()

    held = summary_of(
        run_pipeline(
            state, upload.root, "--min-accuracy", "0", "--param", "max_latency_p95_ms=0.01"
        )
    )

    assert held["deployed"] is False and held["model_version"] is None
    assert held["decision"].startswith(
        "held back by the latency budget: p95 latency of a one-image request "
    )
    assert "> 0.01 ms (max_latency_p95_ms), over by" in held["decision"]
    assert html.escape(held["decision"]) in Path(held["report"]).read_text()
    assert endpoint_record.read_text() == before


def test_weaker_challenger_does_not_replace_the_champion(
    state: Path, upload: Upload, first_run: dict
) -> None:
    """A one-epoch model at a learning rate too small to learn passes a zero bar but loses to
    the served model, so the endpoint keeps serving version 1."""
    endpoint_record = state / "endpoints" / "beers-classifier-endpoint.json"
    before = endpoint_record.read_text()
    weak = ["--param", "epochs=1", "--param", "learning_rate=1e-7", "--param", "fine_tune_epochs=0"]

    challenger = summary_of(run_pipeline(state, upload.root, "--min-accuracy", "0", *weak))

    assert challenger["deployed"] is False and challenger["model_version"] is None
    assert challenger["accuracy"] < first_run["accuracy"]
    assert challenger["champion_accuracy"] == first_run["accuracy"]
    assert challenger["decision"].endswith("not deployed, the champion keeps serving")
    assert endpoint_record.read_text() == before
