"""The beer photos through the local pipeline from other data sources, three runs against one
state folder: a train/-only folder (eval carved) deploys; a 3-class model from a Vertex AI
import CSV is not deployed over that 5-class model, and every output says why; the 5 classes as
a Vertex AI import CSV with display names replace it only with allow_class_change, and the
endpoint serves the names in their sorted order."""

from __future__ import annotations

import base64
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from bench.serve_load import server_process
from components.lib.serving.prediction import ServingModel
from tests.conftest import run_cli

pytestmark = pytest.mark.e2e

DISPLAY_NAMES = {
    "0chimayblue": "Chimay Blue",
    "1orval": "abbaye d'Orval",
    "2rochefort10": "Saint-Rémy Rochefort 10",
    "3westmalletripel": "Westmalle Tripel",
    "4westvleteren12": "Westvleteren 12",
}
SORTED_NAMES = [
    "Chimay Blue",
    "Saint-Rémy Rochefort 10",
    "Westmalle Tripel",
    "Westvleteren 12",
    "abbaye d'Orval",
]
"""Sorted by code point: capitals before lower case, so Orval's index moves from 1 to 4."""
QUICK = ["--param", "epochs=8", "--param", "fine_tune_epochs=0", "--param", "image_size=160"]
ENDPOINT = "projects/local-project/locations/europe-west1/endpoints/beers-classifier-endpoint"


def run_pipeline(state: Path, data: Path | str, *args: str) -> tuple[dict, str]:
    result = run_cli(
        "--local", "--json", "--state-dir", str(state), "--data-uri", str(data), *QUICK, *args
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stdout


def import_csv(path: Path, beers: Path, classes: list[str]) -> Path:
    """The photos as Vertex AI import lines: ML_USE,path,display name."""
    lines = [
        f"{ml_use},{photo},{DISPLAY_NAMES[folder]}"
        for split, ml_use in (("train", "training"), ("eval", "test"))
        for folder in classes
        for photo in sorted((beers / split / folder).glob("*.jpg"))
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sources-state")


@pytest.fixture(scope="module")
def train_only_run(
    state: Path, beer_data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    data = tmp_path_factory.mktemp("train-only") / "beers"
    shutil.copytree(beer_data_dir / "train", data / "train")
    summary, _ = run_pipeline(state, data, "--min-accuracy", "0.5")
    return summary


@pytest.fixture(scope="module")
def three_class_run(
    state: Path,
    beer_data_dir: Path,
    train_only_run: dict,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict, str, str]:
    """Three classes under display names against the served 5-class model; the endpoint
    record before the run is returned with the run's summary and output."""
    folder = tmp_path_factory.mktemp("three-classes")
    before = (state / "endpoints/beers-classifier-endpoint.json").read_text()
    three = import_csv(folder / "beers.csv", beer_data_dir, list(DISPLAY_NAMES)[:3])
    summary, stdout = run_pipeline(state, three, "--min-accuracy", "0.5")
    return summary, stdout, before


@pytest.fixture(scope="module")
def vertex_run(
    state: Path,
    beer_data_dir: Path,
    three_class_run: tuple[dict, str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict:
    """All five classes under display names against the served train/-only model (the same
    photos, other class names): deployed because allow_class_change says so."""
    folder = tmp_path_factory.mktemp("vertex-import")
    data = import_csv(folder / "beers.csv", beer_data_dir, list(DISPLAY_NAMES))
    summary, _ = run_pipeline(
        state, data, "--min-accuracy", "0.5", "--param", "allow_class_change=true"
    )
    return summary


@pytest.fixture(scope="module")
def endpoint_url(state: Path, vertex_run: dict) -> Iterator[str]:
    command = [sys.executable, "-m", "pipeline.serve", "--port", "0", "--state-dir", str(state)]
    with server_process(command, state / "serve.log") as server:
        yield f"{server.url}/v1/{ENDPOINT}:predict"


def test_train_only_folder_carves_an_eval_split_and_deploys(
    train_only_run: dict, beer_data_dir: Path
) -> None:
    counts = [len(list(p.glob("*.jpg"))) for p in sorted((beer_data_dir / "train").iterdir())]
    carved = sum(round(0.2 * count) for count in counts)
    assert train_only_run["deployed"] is True and train_only_run["champion"] == "none served"
    assert train_only_run["eval_images"] == carved
    assert train_only_run["eval_split"] == (
        f"carved from train: {carved} images, 20% of each class (eval_fraction 0.2, seed 42)"
    )
    assert train_only_run["accuracy"] >= 0.7  # head only, a few epochs: quick, not the best
    assert train_only_run["model_version"].endswith("/models/beers-classifier@1")


def test_a_three_class_model_is_not_deployed_over_the_five_class_one(
    three_class_run: tuple[dict, str, str], state: Path
) -> None:
    summary, stdout, endpoint_before = three_class_run
    three_names = sorted(DISPLAY_NAMES[folder] for folder in list(DISPLAY_NAMES)[:3])
    reason = f"it was trained on 5 classes {list(DISPLAY_NAMES)}, this model on 3 {three_names}"
    assert summary["deployed"] is False and summary["model_version"] is None
    assert summary["champion_status"] == "not_comparable" and summary["champion_accuracy"] is None
    assert summary["champion"] == f"a model serves but could not be compared: {reason}"
    assert f"a champion serves but could not be compared ({reason})" in summary["decision"]
    assert summary["decision"].endswith(
        "replacing it needs allow_class_change=true: not deployed, the champion keeps serving"
    )
    assert f"champion       a model serves but could not be compared: {reason}" in stdout
    page = Path(summary["report"]).read_text()
    assert "a model serves but could not be compared: it was trained on 5 classes" in page
    assert "none served" not in page
    assert (state / "endpoints/beers-classifier-endpoint.json").read_text() == endpoint_before


def test_display_names_replace_the_served_model_only_when_allowed(
    vertex_run: dict, state: Path
) -> None:
    assert vertex_run["deployed"] is True and vertex_run["champion_status"] == "not_comparable"
    assert "allow_class_change is set: deploy" in vertex_run["decision"]
    assert vertex_run["eval_split"] == "the import file's test rows"
    assert vertex_run["eval_images"] == 97
    assert vertex_run["model_version"].endswith("/models/beers-classifier@2")
    record = json.loads((state / "models/beers-classifier/model.json").read_text())
    labels = record["versions"][1]["labels"]
    assert labels["gate_allow_class_change"] == "true"
    assert labels["champion_status"] == "not_comparable"
    assert "allow_class_change=true" in record["versions"][1]["versionDescription"]


def test_the_endpoint_serves_the_display_names_in_sorted_order(
    endpoint_url: str, state: Path, beer_data_dir: Path
) -> None:
    served = ServingModel(str(state / "models/beers-classifier/versions/2"))
    assert served.class_names == SORTED_NAMES
    right = total = 0
    for folder, name in DISPLAY_NAMES.items():
        photos = sorted((beer_data_dir / "eval" / folder).glob("*.jpg"))
        instances = [{"bytes": {"b64": base64.b64encode(p.read_bytes()).decode()}} for p in photos]
        response = requests.post(endpoint_url, json={"instances": instances}, timeout=120)
        assert response.status_code == 200, response.text
        assert response.json()["modelVersionId"] == "2"
        predicted = [served.class_names[p["CLASSES"]] for p in response.json()["predictions"]]
        right += predicted.count(name)
        total += len(predicted)
    assert right / total >= 0.7
