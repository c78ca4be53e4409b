"""A version's evaluation as the registry keeps it: Vertex AI's classification metrics schema, the
local registry's record, and the champion read back from it instead of scored again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from components.lib.evaluation.metrics import COMPARED, Evaluation, evaluate_saved_model
from components.lib.evaluation.model_evaluation import (
    CLASSIFICATION_METRICS_SCHEMA,
    area_under_pr,
    area_under_roc,
    champion_from_registry,
    class_slices,
    classification_metrics,
    evaluation_from_rows,
    write_model_evaluation,
)
from components.lib.targets.base import ModelEvaluationRecord
from components.lib.targets.local import ModelRegistry
from tests.conftest import make_layout, write_image
from tests.serving_models import COLOURS

CLASSES = ["cat", "dog", "owl"]
# Six photos: two of each class; the fourth (a dog) is taken for a cat.
PROBABILITIES = np.array(
    [
        [0.8, 0.1, 0.1],
        [0.6, 0.3, 0.1],
        [0.1, 0.7, 0.2],
        [0.5, 0.4, 0.1],
        [0.1, 0.2, 0.7],
        [0.2, 0.2, 0.6],
    ]
)
LABELS = (0, 0, 1, 1, 2, 2)


def crafted(fingerprint: str = "sha256:" + "0" * 64) -> Evaluation:
    return Evaluation(
        CLASSES,
        [[2, 0, 0], [1, 1, 0], [0, 0, 2]],
        photos=tuple(
            f"/data/eval/{CLASSES[label]}/{index}.jpg" for index, label in enumerate(LABELS)
        ),
        labels=LABELS,
        probabilities=PROBABILITIES,
        fingerprint=fingerprint,
    )


def at(entries: list[dict], threshold: float) -> dict:
    [entry] = [e for e in entries if e["confidenceThreshold"] == threshold]
    return entry


def test_the_metrics_follow_the_classification_schema() -> None:
    evaluation = crafted()
    metrics = classification_metrics(evaluation)

    assert metrics["confusionMatrix"] == {
        "annotationSpecs": [
            {"id": "0", "displayName": "cat"},
            {"id": "1", "displayName": "dog"},
            {"id": "2", "displayName": "owl"},
        ],
        "rows": [[2, 0, 0], [1, 1, 0], [0, 0, 2]],
    }
    thresholds = [e["confidenceThreshold"] for e in metrics["confidenceMetrics"]]
    assert thresholds[:3] == [0.0, 0.05, 0.1] and thresholds[-5:] == [0.95, 0.96, 0.97, 0.98, 0.99]
    zero = at(metrics["confidenceMetrics"], 0.0)
    # Top class only, no threshold: the accuracy (the schema has no field of its own for it).
    assert zero["precisionAt1"] == zero["recallAt1"] == evaluation.accuracy == 5 / 6
    # Every class counts as predicted at threshold 0: all 6 true pairs found among 18.
    assert (zero["precision"], zero["recall"]) == (pytest.approx(1 / 3), 1.0)
    assert (zero["truePositiveCount"], zero["falsePositiveCount"]) == ("6", "12")
    half = at(metrics["confidenceMetrics"], 0.55)
    # Scores >= 0.55: 0.8, 0.6 (cats), 0.7 (dog), 0.7, 0.6 (owls), all true.
    assert (half["truePositiveCount"], half["falsePositiveCount"]) == ("5", "0")
    assert half["precision"] == 1.0 and half["recall"] == pytest.approx(5 / 6)
    assert metrics["logLoss"] == pytest.approx(-np.mean(np.log([0.8, 0.6, 0.7, 0.4, 0.7, 0.6])))
    assert 0.5 < metrics["auRoc"] <= 1 and 0.5 < metrics["auPrc"] <= 1
    json.dumps(metrics)  # plain JSON, as the API's Struct takes it


def test_each_class_is_a_slice_with_its_precision_and_recall() -> None:
    evaluation = crafted()
    slices = class_slices(evaluation)
    assert [(s["dimension"], s["value"]) for s in slices] == [
        ("annotationSpec", "cat"),
        ("annotationSpec", "dog"),
        ("annotationSpec", "owl"),
    ]
    for piece in slices:
        zero = at(piece["metrics"]["confidenceMetrics"], 0.0)
        assert zero["precisionAt1"] == evaluation.precision()[piece["value"]]
        assert zero["recallAt1"] == evaluation.recall()[piece["value"]]
    assert evaluation.precision()["cat"] == 2 / 3 and evaluation.recall()["dog"] == 1 / 2


def test_areas_under_the_curves() -> None:
    truth = np.array([True, False, True, False])
    assert area_under_pr(np.array([0.9, 0.1, 0.8, 0.2]), truth) == 1.0
    assert area_under_roc(np.array([0.9, 0.1, 0.8, 0.2]), truth) == 1.0
    assert area_under_roc(np.array([0.1, 0.9, 0.2, 0.8]), truth) == 0.0
    assert area_under_roc(np.full(4, 0.5), truth) == 0.5, "ties count half"
    # Ranked true, false, true: precision 1 at the first hit, 2/3 at the second.
    assert area_under_pr(np.array([0.9, 0.5, 0.8, 0.1]), np.array([True, False, False, True])) == (
        pytest.approx((1 + 2 / 4) / 2)
    )


def record_of(evaluation: Evaluation, folder: Path) -> ModelEvaluationRecord:
    return ModelEvaluationRecord(
        **write_model_evaluation(evaluation, "/data", str(folder), str(folder), "/data")
    )


def test_the_local_registry_keeps_the_evaluation_with_the_version(tmp_path: Path) -> None:
    registry = ModelRegistry(str(tmp_path / "state"), "local-project", "europe-west1")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "saved_model.pb").write_bytes(b"model")
    version = registry.upload_version("beer", str(tmp_path / "model"), {}, {})
    first = record_of(crafted(), tmp_path / "evaluation-1")

    stored = registry.import_evaluation(version, first)

    assert stored.name == f"{version.model}/evaluations/1"
    assert (stored.metrics, stored.fingerprint) == (first.metrics, first.fingerprint)
    assert [s["value"] for s in stored.slices] == CLASSES
    assert stored.metadata["class_names"] == CLASSES and stored.metadata["eval_images"] == 6
    assert stored.metrics_schema_uri == CLASSIFICATION_METRICS_SCHEMA
    # The registry keeps its own copy of the per-photo results.
    assert stored.rows_uri.startswith(str(tmp_path / "state" / "models" / "beer"))
    assert Path(stored.rows_uri).read_text() == Path(first.rows_uri).read_text()
    record = json.loads((tmp_path / "state/models/beer/model.json").read_text())
    [kept] = record["versions"][0]["evaluations"]
    assert kept["metadata"]["eval_fingerprint"] == first.fingerprint
    # Kept relative to the state folder, which can then be moved whole.
    assert tmp_path / "state" / kept["metadata"]["row_based_metrics_path"] == Path(stored.rows_uri)
    assert kept["sliceDimensions"] == ["annotationSpec"]

    # The same eval photos again: the same evaluation; other photos: a second one.
    assert registry.import_evaluation(version, first) == stored
    other = record_of(crafted("sha256:" + "1" * 64), tmp_path / "evaluation-2")
    registry.import_evaluation(version, other)
    assert [e.fingerprint for e in registry.list_evaluations(version)] == [
        first.fingerprint,
        other.fingerprint,
    ]
    missing = type(version)(version.model, "7", "beer", "")
    with pytest.raises(KeyError, match="@7 is not in the local registry"):
        registry.list_evaluations(missing)


@pytest.fixture
def colour_data(tmp_path: Path) -> Path:
    """Two photos of each colour the colour models know, in train and eval."""
    return make_layout(tmp_path / "data", {name: 2 for name in COLOURS})


@pytest.mark.slow
def test_the_champion_is_read_back_when_the_eval_photos_are_the_same_and_rescored_otherwise(
    tmp_path: Path, colour_models: dict[str, Path], colour_data: Path, caplog
) -> None:
    served = colour_models["v2"]  # answers in reverse: 2 of 6 right
    challenger = evaluate_saved_model(str(colour_models["v1"]), str(colour_data))
    champion_scores = evaluate_saved_model(str(served), str(colour_data))
    record = write_model_evaluation(
        champion_scores, str(colour_data), str(tmp_path / "rec"), str(tmp_path / "rec")
    )
    recorded = {record["fingerprint"]: record["rows_uri"]}
    assert record["fingerprint"] == challenger.fingerprint

    # Same photos: read back, the model is not loaded (its folder is not even there).
    champion = champion_from_registry(
        recorded, str(tmp_path / "gone"), str(colour_data), challenger
    )
    assert champion.status == COMPARED
    assert champion.accuracy == champion_scores.accuracy == 2 / 6
    assert champion.evaluation.confusion_matrix == champion_scores.confusion_matrix
    assert champion.evaluation.right_by_photo() == champion_scores.right_by_photo()
    assert champion.how.startswith("read from its evaluation in the model registry (same eval")
    assert champion.how in champion.describe()

    # One eval photo replaced: other photos, so the served model is scored again.
    changed = tmp_path / "changed"
    shutil.copytree(colour_data, changed)
    write_image(changed / "eval" / "0red" / "000.jpg", (210, 30, 30))
    challenger_now = evaluate_saved_model(str(colour_models["v1"]), str(changed))
    assert challenger_now.fingerprint != challenger.fingerprint
    rescored = champion_from_registry(recorded, str(served), str(changed), challenger_now)
    assert rescored.status == COMPARED and rescored.accuracy == 2 / 6
    assert rescored.how.startswith("re-scored: its registry evaluation is of other eval photos")

    # No evaluation at all: scored, and said so.
    scored = champion_from_registry({}, str(served), str(colour_data), challenger)
    assert scored.how == "scored: it has no evaluation in the model registry"
    # Results that do not cover the photos are not taken for them.
    write_image(changed / "eval" / "0red" / "002.jpg", COLOURS["0red"])
    with pytest.raises(ValueError, match="are not of the photos"):
        evaluation_from_rows(record["rows_uri"], str(changed), challenger.fingerprint)


def test_a_kept_evaluation_follows_a_moved_state_folder(tmp_path: Path) -> None:
    registry = ModelRegistry(str(tmp_path / "state"), "local-project", "europe-west1")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "saved_model.pb").write_bytes(b"model")
    version = registry.upload_version("beer", str(tmp_path / "model"), {}, {})
    registry.import_evaluation(version, record_of(crafted(), tmp_path / "evaluation-1"))

    (tmp_path / "state").rename(tmp_path / "moved")

    moved = ModelRegistry(str(tmp_path / "moved"), "local-project", "europe-west1")
    [kept] = moved.list_evaluations(moved.get_version(version.model, version.version_id))
    assert Path(kept.rows_uri).is_relative_to(tmp_path / "moved")
    assert Path(kept.rows_uri).is_file()
