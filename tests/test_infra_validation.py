"""Infra validation: the real server (``python -m pipeline.serve`` with the ``AIP_*`` variables)
on small real models, its answers checked against evaluate's, its figures held to the gate's
serving budgets, and the decision, evaluation and report completed with them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from components.lib.evaluation.infra_validation import (
    expected_answers,
    report_with_serving,
    serving_decision,
    validate_candidate,
)
from components.lib.evaluation.rule import GateRule
from components.lib.evaluation.stored import read_model_evaluation
from components.lib.evaluation.summary import EvaluationSummary
from components.lib.serving.infra import (
    InfraValidationError,
    Latency,
    ServingFigures,
    model_size_mb,
    validate_serving,
)
from tests.conftest import make_layout

CLASSES = ["0red", "1blue", "2green"]
FIGURES = ServingFigures(
    model_mb=18.5,
    load_seconds=9.2,
    loading_answers=12,
    photos=97,
    single=Latency(1, 97, 41.0, 52.5),
    concurrent=Latency(4, 97, 90.0, 130.0),
)
ACCURATE = "accuracy 0.9897 >= required 0.8000, no champion serving: deploy"


@pytest.fixture(scope="module")
def colour_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two photos per class of the colour models, in the challenge layout."""
    return make_layout(tmp_path_factory.mktemp("colours"), dict.fromkeys(CLASSES, 2))


def evaluated(model_dir: Path, data_dir: Path, folder: Path) -> EvaluationSummary:
    """What the evaluate step writes for ``model_dir`` on ``data_dir``: its scores (through the
    same signature, in this process) as the registry keeps them, and its summary's gate."""
    from components.lib.evaluation.metrics import evaluate_saved_model
    from components.lib.evaluation.model_evaluation import write_model_evaluation

    evaluation = evaluate_saved_model(str(model_dir), str(data_dir))
    write_model_evaluation(evaluation, str(data_dir), str(folder), str(folder))
    return EvaluationSummary(
        accuracy_ci95=evaluation.accuracy_interval,
        correct=evaluation.correct,
        eval_images=evaluation.count,
        eval_split="",
        champion_status="none",
        champion="none served",
        eval_fingerprint=evaluation.fingerprint,
        gate={**dataclasses.asdict(GateRule()), "rule": GateRule().describe()},
    )


def test_the_served_answers_are_evaluates_and_the_figures_are_measured(
    colour_models: dict[str, Path], colour_photos: Path, tmp_path: Path
) -> None:
    summary = evaluated(colour_models["v1"], colour_photos, tmp_path / "evaluation")
    (tmp_path / "report.html").write_text('<body><p id="decision">old</p><table></table></body>')

    result = validate_candidate(
        str(colour_models["v1"]),
        str(colour_photos),
        str(tmp_path / "evaluation"),
        summary,
        True,
        ACCURATE,
        str(tmp_path / "report.html"),
        str(tmp_path / "completed"),
        str(tmp_path / "completed.html"),
        clients=3,
    )

    figures = result.figures
    assert figures.photos == 6 and figures.single.requests == figures.concurrent.requests == 6
    assert (figures.single.clients, figures.concurrent.clients) == (1, 3)
    assert 0 < figures.single.p50_ms <= figures.single.p95_ms < 60_000
    assert 0 < figures.concurrent.p50_ms <= figures.concurrent.p95_ms < 60_000
    assert figures.model_mb == model_size_mb(str(colour_models["v1"])) > 0
    assert 0 < figures.load_seconds < GateRule().max_load_seconds
    assert result.deploy is True
    assert result.reason.startswith(ACCURATE + "; serving within its budgets (p95 ")
    assert result.summary.serving == figures.to_dict()
    assert result.summary.decision == result.reason
    assert EvaluationSummary.from_dict(result.summary.to_dict()) == result.summary
    record = read_model_evaluation(str(tmp_path / "completed"))
    assert record["metadata"]["serving"] == figures.to_dict()
    assert record["rows_uri"] == read_model_evaluation(str(tmp_path / "evaluation"))["rows_uri"]
    report = (tmp_path / "completed.html").read_text()
    assert 'id="serving"' in report and "old" not in report
    assert f"p95 {figures.single.p95_ms:g} ms (budget 1000 ms)" in report


def refusal(served: Path, evaluated_model: Path, photos: Path, work: Path) -> str:
    """The error that stops serving ``served`` against the answers of ``evaluated_model``."""
    evaluated(evaluated_model, photos, work)
    class_names, expected = expected_answers(str(work))
    with pytest.raises(InfraValidationError) as raised:
        validate_serving(str(served), str(photos), expected, class_names)
    return str(raised.value)


def test_answers_other_than_evaluates_stop_the_step(
    colour_models: dict[str, Path], colour_photos: Path, tmp_path: Path
) -> None:
    """v2 answers the classes in reverse: served where v1 was evaluated, red is not red."""
    message = refusal(colour_models["v2"], colour_models["v1"], colour_photos, tmp_path)
    assert message.startswith("4 of 6 photos were answered otherwise than evaluate found, at 1")
    assert "eval/0red/000.jpg: served '2green', evaluate found '0red'" in message


def test_a_model_the_server_cannot_load_stops_the_step_with_its_reason(
    colour_models: dict[str, Path], colour_photos: Path, tmp_path: Path
) -> None:
    """``no-model`` holds its class names and no SavedModel: a broken export."""
    message = refusal(colour_models["no-model"], colour_models["v1"], colour_photos, tmp_path)
    assert message.startswith("the server cannot load the model (it exited 1 before it was")
    assert "SavedModel file does not exist" in message and "\n" not in message


@pytest.mark.slow
def test_the_server_reads_a_model_in_cloud_storage(
    stored, colour_models: dict[str, Path], colour_photos: Path, tmp_path: Path, monkeypatch
) -> None:
    """On Vertex AI the model's URI is gs://: the server reads it through the storage seam."""
    monkeypatch.setenv("FSSPEC_GS_TOKEN", "anon")  # the server's process reads the emulator too
    evaluated(colour_models["v1"], colour_photos, tmp_path)
    class_names, expected = expected_answers(str(tmp_path))
    uri = stored("v1")

    figures = validate_serving(uri, str(colour_photos), expected, class_names, clients=2)

    assert figures.photos == 6
    assert figures.model_mb == model_size_mb(str(colour_models["v1"]))


def test_expected_answers_are_the_classes_evaluate_was_served(
    colour_models: dict[str, Path], colour_photos: Path, tmp_path: Path
) -> None:
    evaluated(colour_models["v1"], colour_photos, tmp_path)
    class_names, expected = expected_answers(str(tmp_path))
    assert class_names == CLASSES
    assert [(item.photo, item.predicted) for item in expected] == [
        (f"eval/{name}/{index:03d}.jpg", label)
        for label, name in enumerate(CLASSES)
        for index in range(2)
    ]


def test_a_model_over_the_latency_budget_is_held_back_and_the_reason_says_by_how_much() -> None:
    deploy, reason = serving_decision(True, ACCURATE, GateRule(max_latency_p95_ms=1), FIGURES)
    assert deploy is False
    assert reason == (
        "held back by the latency budget: p95 latency of a one-image request 52.5 ms > 1 ms "
        f"(max_latency_p95_ms), over by 51.5 ms: not deployed (accuracy gate: {ACCURATE})"
    )


def test_every_budget_overrun_is_named() -> None:
    rule = GateRule(max_model_size_mb=10, max_load_seconds=5)
    deploy, reason = serving_decision(True, ACCURATE, rule, FIGURES)
    assert deploy is False
    assert "the model size budget: model size 18.5 MB > 10 MB (max_model_size_mb), over by 8.5" in (
        reason
    )
    assert "the load time budget: time from start to healthy 9.2 s > 5 s (max_load_seconds)" in (
        reason
    )
    assert "latency" not in reason.split("(accuracy gate")[0]


def test_within_the_budgets_evaluates_decision_stands() -> None:
    assert serving_decision(True, ACCURATE, GateRule(), FIGURES) == (
        True,
        f"{ACCURATE}; serving within its budgets (p95 52.5 <= 1000 ms, 18.5 <= 100 MB, healthy "
        "in 9.2 <= 300 s)",
    )
    refused = "accuracy 0.5000 < required 0.8000: not deployed"
    assert serving_decision(False, refused, GateRule(), FIGURES) == (False, refused)
    deploy, reason = serving_decision(False, refused, GateRule(max_latency_p95_ms=1), FIGURES)
    assert deploy is False and reason.startswith(f"{refused}; also over the latency budget")


def test_the_defaults_leave_room_for_the_beer_model() -> None:
    """The defaults are budgets, not a second accuracy bar: a CPU serving the beer model keeps
    them by a wide margin (BENCHMARKS.md, infra validation)."""
    rule = GateRule()
    assert rule.overruns(latency_p95_ms=200, model_mb=30, load_seconds=40) == []


def test_the_rule_reads_back_from_a_summary_with_its_wording() -> None:
    rule = GateRule(0.9, 0.01, True, 250.0, 50.0, 30.0)
    settings = json.loads(json.dumps({**dataclasses.asdict(rule), "rule": rule.describe()}))
    assert GateRule.from_dict(settings) == rule
    assert "p95 latency of a one-image request <= 250 ms (max_latency_p95_ms)" in rule.describe()
    assert rule.labels()["gate_max_latency_p95_ms"] == "250"


def test_the_report_gets_the_final_decision_and_the_serving_section(tmp_path: Path) -> None:
    from components.lib.evaluation.metrics import Champion, Decision
    from components.lib.evaluation.report import build_report
    from tests.conftest import scored

    evaluation = scored([True, True, False])
    page = build_report(evaluation, {}, Decision(True, ACCURATE), Champion("none"), GateRule())

    completed = report_with_serving(page, False, "held back", '<h2 id="serving">S</h2>')

    assert '<p id="decision"><b class="reject">Decision</b>: held back</p>' in completed
    assert completed.index('id="serving"') < completed.index('id="confusion-matrix"')
    assert ACCURATE not in completed.split('id="serving"')[0]
    with pytest.raises(ValueError, match='no <p id="decision">'):
        report_with_serving("<html></html>", True, "x", "")


def test_a_broken_export_is_stopped_at_infra_validation(
    colour_models: dict[str, Path],
    colour_photos: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture,
) -> None:
    """The step itself, under kfp.local as a local run runs it: its failure fails the run, so
    the upload behind it never starts."""
    import kfp.local
    from kfp import dsl

    from components.infra_validate import infra_validate

    summary = evaluated(colour_models["v1"], colour_photos, tmp_path / "evaluation")
    (tmp_path / "report.html").write_text('<p id="decision">x</p>')

    @dsl.pipeline(name="infra-validation-check")
    def check():  # kfp reads a return annotation as an output
        def imported(path: Path, kind: type) -> dsl.PipelineChannel:
            return dsl.importer(artifact_uri=str(path), artifact_class=kind).output

        infra_validate(
            model=imported(colour_models["no-model"], dsl.Model),
            raw_data=imported(colour_photos, dsl.Dataset),
            evaluation=imported(tmp_path / "evaluation", dsl.Artifact),
            evaluation_report=imported(tmp_path / "report.html", dsl.HTML),
            evaluate_deploy=True,
            evaluate_reason=ACCURATE,
            evaluation_summary=summary.to_dict(),
        )

    kfp.local.init(
        runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root")
    )
    with pytest.raises(RuntimeError, match="infra-validate"):
        check()
    assert "InfraValidationError: the server cannot load the model" in capfd.readouterr().out
