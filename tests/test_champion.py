"""Champion vs challenger: the served model is looked up, scored on the same eval data, and a
weaker challenger never replaces it, with small real models trained on the demo photos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.lib.evaluation.metrics import (
    deployment_decision,
    evaluate_champion,
    evaluate_saved_model,
)
from components.lib.targets import champion_version
from components.lib.targets.local import EndpointRegistry, ModelRegistry
from tests.conftest import make_layout

PROJECT, LOCATION, ENDPOINT = "local-project", "europe-west1", "beer-classifier-endpoint"


def champion(state: Path) -> str | None:
    served = champion_version("local", str(state), PROJECT, LOCATION, ENDPOINT)
    return served.artifact_uri if served else None


def serve(state: Path, model_dir: Path) -> None:
    """What the pipeline's upload and deploy steps do behind an open gate."""
    version = ModelRegistry(str(state), PROJECT, LOCATION).upload_version(
        "beer-classifier", str(model_dir), {}, {}
    )
    EndpointRegistry(str(state), PROJECT, LOCATION).deploy(ENDPOINT, version)


def challenge(state: Path, challenger: Path, data: Path) -> tuple[bool, str]:
    """The evaluate step's decision, then upload and deploy only when it says deploy."""
    accuracy = evaluate_saved_model(str(challenger), str(data)).accuracy
    served = evaluate_champion(champion(state), str(data))
    deploy, reason = deployment_decision(accuracy, 0.0, served.accuracy if served else None)
    if deploy:
        serve(state, challenger)
    return deploy, reason


def test_no_endpoint_means_no_champion(tmp_path: Path, demo_data_dir: Path) -> None:
    assert champion(tmp_path) is None
    assert evaluate_champion(None, str(demo_data_dir)) is None


def test_champion_is_the_served_version_artifact(tmp_path: Path, demo_model_dir: Path) -> None:
    serve(tmp_path, demo_model_dir)
    served = Path(champion(tmp_path))
    assert served == tmp_path / "models/beer-classifier/versions/1"
    assert (served / "class_names.json").read_text() == (
        demo_model_dir / "class_names.json"
    ).read_text()


@pytest.mark.slow
def test_weaker_challenger_is_not_deployed_and_stronger_one_replaces_it(
    tmp_path: Path, demo_model_dir: Path, weak_model_dir: Path, demo_data_dir: Path
) -> None:
    strong = evaluate_saved_model(str(demo_model_dir), str(demo_data_dir)).accuracy
    weak = evaluate_saved_model(str(weak_model_dir), str(demo_data_dir)).accuracy
    assert strong >= 0.9 and weak < 0.6

    assert challenge(tmp_path, weak_model_dir, demo_data_dir) == (
        True,
        f"accuracy {weak:.4f} >= required 0.0000, no champion serving: deploy",
    )
    assert challenge(tmp_path, demo_model_dir, demo_data_dir) == (
        True,
        f"accuracy {strong:.4f} >= required 0.0000 and >= champion {weak:.4f} "
        "- max regression 0.0000: deploy",
    )
    endpoint = tmp_path / "endpoints" / f"{ENDPOINT}.json"
    before = endpoint.read_text()

    deploy, reason = challenge(tmp_path, weak_model_dir, demo_data_dir)

    assert deploy is False
    assert reason.endswith(
        f"but < champion {strong:.4f} - max regression 0.0000: not deployed, the champion "
        "keeps serving"
    )
    assert endpoint.read_text() == before
    assert json.loads(before)["deployedModels"][0]["modelVersionId"] == "2"
    assert Path(champion(tmp_path)) == tmp_path / "models/beer-classifier/versions/2"


def test_champion_with_other_classes_is_not_compared(tmp_path: Path, demo_model_dir: Path) -> None:
    other = make_layout(tmp_path / "other")
    assert evaluate_champion(str(demo_model_dir), str(other)) is None


@pytest.mark.parametrize(
    ("accuracy", "champion_accuracy", "max_regression", "deploy"),
    [
        (0.95, 0.96, 0.0, False),
        (0.96, 0.96, 0.0, True),
        (0.95, 0.96, 0.02, True),
        (0.93, 0.96, 0.02, False),
        (0.79, 0.50, 0.0, False),
    ],
)
def test_decision_against_champion(
    accuracy: float, champion_accuracy: float, max_regression: float, deploy: bool
) -> None:
    decided, _ = deployment_decision(accuracy, 0.8, champion_accuracy, max_regression)
    assert decided is deploy
