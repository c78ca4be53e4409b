"""Labelled feedback in the canary review: a folder of <class>/<photo> or a CSV of image,label
scores both versions; a canary less accurate than the champion is rolled back."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.lib.monitoring.canary import CanaryRule
from components.lib.targets.base import Serving
from components.lib.targets.canary import CanaryError, Served, read_feedback, review_canary
from components.lib.targets.local import EndpointRegistry, ModelRegistry
from tests.conftest import write_image
from tests.serving_models import COLOURS

PROJECT, LOCATION, ENDPOINT = "local-project", "europe-west1", "beer-endpoint"


@pytest.fixture
def feedback(tmp_path: Path) -> Path:
    """Four photos of each colour, in folders named by class."""
    for name, colour in COLOURS.items():
        for index in range(4):
            write_image(tmp_path / "feedback" / name / f"{index}.jpg", colour)
    return tmp_path / "feedback"


def test_feedback_is_read_from_a_folder_or_a_csv(feedback: Path, tmp_path: Path) -> None:
    from_folder = read_feedback(str(feedback))
    assert sorted(label for _, label in from_folder) == sorted(list(COLOURS) * 4)
    photos = sorted(feedback.rglob("*.jpg"))
    rows = ["image,label", *(f"{p.relative_to(feedback)},{p.parent.name}" for p in photos)]
    (feedback / "labels.csv").write_text("\n".join(rows))
    from_csv = read_feedback(str(feedback / "labels.csv"))
    assert sorted(from_csv) == sorted(from_folder)
    (tmp_path / "bad.csv").write_text("path,class\na.jpg,x\n")
    with pytest.raises(CanaryError, match="columns image and label"):
        read_feedback(str(tmp_path / "bad.csv"))
    with pytest.raises(CanaryError, match="does not exist"):
        read_feedback(str(tmp_path / "nowhere"))


def test_a_less_accurate_canary_is_rolled_back(
    colour_models: dict[str, Path], feedback: Path, tmp_path: Path
) -> None:
    """v2 answers the classes in reverse: right on green's neighbour only, 1 class in 3."""
    state = str(tmp_path / "state")
    registry = ModelRegistry(state, PROJECT, LOCATION)
    versions = {}
    for which, share in (("v1", 100), ("v2", 50)):
        version = registry.upload_version("beer", str(colour_models[which]), {}, {})
        EndpointRegistry(state, PROJECT, LOCATION, Serving(traffic_percentage=share)).deploy(
            ENDPOINT, version
        )
        versions[f"beer-v{version.version_id}"] = version
    healthy = {name: Served(200, 0, 20.0) for name in versions}
    endpoints = EndpointRegistry(state, PROJECT, LOCATION)
    rule = CanaryRule(min_requests=100, min_feedback=12)

    decision = review_canary(
        endpoints, ENDPOINT, healthy, rule, versions, read_feedback(str(feedback))
    )
    assert decision.action == "rollback"
    assert (decision.champion.feedback_correct, decision.champion.feedback_total) == (12, 12)
    assert decision.canary.feedback_correct == 4  # the middle class, reversed onto itself
    assert (
        "accuracy 0.333 on 12 labelled photos against the champion's 1.000" in (decision.reasons[0])
    )
    record = endpoints.get(ENDPOINT)
    assert record["trafficSplit"] == {"beer-v1": 100}
    assert record["canaryReviews"][-1]["decision"]["action"] == "rollback"
