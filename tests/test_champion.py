"""Champion vs challenger: the served model is looked up, scored on the same eval photos and
compared photo by photo; a weaker challenger, or one trained on other classes, never replaces it
(real small models trained on the demo photos, and scored photo sets for the rule itself)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.lib.evaluation.metrics import (
    COMPARED,
    NO_CHAMPION,
    NOT_COMPARABLE,
    Champion,
    GateRule,
    deployment_decision,
    evaluate_champion,
    evaluate_saved_model,
)
from components.lib.targets import champion_version
from components.lib.targets.local import EndpointRegistry, ModelRegistry
from tests.conftest import make_layout, scored

PROJECT, LOCATION, ENDPOINT = "local-project", "europe-west1", "beer-classifier-endpoint"
NO_BAR = GateRule(min_accuracy=0.0)


def champion(state: Path) -> str | None:
    served = champion_version("local", str(state), PROJECT, LOCATION, ENDPOINT)
    return served.artifact_uri if served else None


def serve(state: Path, model_dir: Path) -> None:
    """What the pipeline's upload and deploy steps do behind an open gate."""
    version = ModelRegistry(str(state), PROJECT, LOCATION).upload_version(
        "beer-classifier", str(model_dir), {}, {}
    )
    EndpointRegistry(str(state), PROJECT, LOCATION).deploy(ENDPOINT, version)


def challenge(state: Path, challenger: Path, data: Path, rule: GateRule = NO_BAR):
    """The evaluate step's decision, then upload and deploy only when it says deploy."""
    evaluation = evaluate_saved_model(str(challenger), str(data))
    decision = deployment_decision(evaluation, evaluate_champion(champion(state), str(data)), rule)
    if decision.deploy:
        serve(state, challenger)
    return decision


def test_no_endpoint_means_no_champion(tmp_path: Path, demo_data_dir: Path) -> None:
    assert champion(tmp_path) is None
    assert evaluate_champion(None, str(demo_data_dir)) == Champion(NO_CHAMPION)


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

    first = challenge(tmp_path, weak_model_dir, demo_data_dir)
    assert (first.deploy, first.reason) == (
        True,
        f"accuracy {weak:.4f} >= required 0.0000, no champion serving: deploy",
    )
    second = challenge(tmp_path, demo_model_dir, demo_data_dir)
    assert second.deploy is True and second.comparison.difference > 0
    assert f"vs champion {weak:.4f}: on the same 24 photos" in second.reason
    assert second.reason.endswith("allows 0 photo(s) fewer: deploy")
    endpoint = tmp_path / "endpoints" / f"{ENDPOINT}.json"
    before = endpoint.read_text()

    third = challenge(tmp_path, weak_model_dir, demo_data_dir)

    assert third.deploy is False
    assert third.comparison.significant and "significantly worse" in third.reason
    assert third.reason.endswith("not deployed, the champion keeps serving")
    assert endpoint.read_text() == before
    assert json.loads(before)["deployedModels"][0]["modelVersionId"] == "2"
    assert Path(champion(tmp_path)) == tmp_path / "models/beer-classifier/versions/2"


@pytest.mark.slow
def test_champion_with_other_classes_is_served_but_never_replaced_unless_allowed(
    tmp_path: Path, demo_model_dir: Path
) -> None:
    """A 2-class challenger against the 4-class demo champion: not comparable, and the reason
    names both class lists; only allow_class_change lets it replace the champion."""
    other = make_layout(tmp_path / "other")
    served = evaluate_champion(str(demo_model_dir), str(other))
    assert served.status == NOT_COMPARABLE and served.accuracy is None
    assert served.reason == (
        "it was trained on 4 classes ['0astronaut', '1cat', '2coffee', '3rocket'], this model "
        "on 2 ['0red', '1blue']"
    )
    assert served.describe().startswith("a model serves but could not be compared: it was")
    challenger = scored([True] * 8, ("0red", "1blue"))

    refused = deployment_decision(challenger, served, GateRule(0.8))
    allowed = deployment_decision(challenger, served, GateRule(0.8, allow_class_change=True))

    assert refused.deploy is False and refused.comparison is None
    assert f"a champion serves but could not be compared ({served.reason})" in refused.reason
    assert refused.reason.endswith(
        "replacing it needs allow_class_change=true: not deployed, the champion keeps serving"
    )
    assert allowed.deploy is True
    assert allowed.reason.endswith("allow_class_change is set: deploy")


def test_one_photo_better_is_not_significant_and_the_rule_decides() -> None:
    """97 photos: the challenger gets one more right than the champion. The paired test calls
    that chance (p = 1), and the documented rule (not worse by more than max_regression)
    deploys it; one photo worse is refused at max_regression 0 and allowed at 0.0104."""
    champion = Champion(COMPARED, scored([True] * 95 + [False] * 2))
    better = scored([True] * 96 + [False])
    worse = scored([True] * 94 + [False] * 3)

    decision = deployment_decision(better, champion, GateRule(0.8))

    assert decision.deploy is True
    assert (decision.comparison.challenger_only, decision.comparison.champion_only) == (1, 0)
    assert decision.comparison.p_value == 1.0 and not decision.comparison.significant
    assert (
        "on the same 97 photos 1 are right only by this model and 0 only by the champion: "
        "exact McNemar p = 1.000, not significantly different (at 0.05)" in decision.reason
    )
    refused = deployment_decision(worse, champion, GateRule(0.8))
    assert refused.deploy is False and "not significantly different" in refused.reason
    assert "allows 0 photo(s) fewer, it has 1: not deployed" in refused.reason
    assert deployment_decision(worse, champion, GateRule(0.8, 0.0104)).deploy is True


@pytest.mark.parametrize(
    ("right", "champion_right", "max_regression", "deploy"),
    [
        (95, 96, 0.0, False),
        (96, 96, 0.0, True),
        (95, 96, 0.02, True),
        (93, 96, 0.02, False),
        (79, 50, 0.0, False),
    ],
)
def test_decision_against_champion(
    right: int, champion_right: int, max_regression: float, deploy: bool
) -> None:
    """The documented rule on 100 photos: accuracy >= min_accuracy (0.8) and at most
    max_regression x 100 photos fewer right than the champion."""
    challenger = scored([True] * right + [False] * (100 - right))
    champion = Champion(
        COMPARED, scored([True] * champion_right + [False] * (100 - champion_right))
    )
    decision = deployment_decision(challenger, champion, GateRule(0.8, max_regression))
    assert decision.deploy is deploy
