"""The evaluation's result as the steps pass it: a typed object through a dict step output."""

from __future__ import annotations

import dataclasses
import json

from components.lib.evaluation.rule import GateRule
from components.lib.evaluation.summary import EvaluationSummary

RULE = GateRule(0.9, 0.01, True, 250.0, 50.0, 30.0)
SUMMARY = EvaluationSummary(
    accuracy_ci95=(0.81, 0.97),
    correct=45,
    eval_images=50,
    eval_split="a seeded 20% hold-out",
    champion_status="none",
    champion="none served",
    eval_fingerprint="sha256:ab",
    gate={**dataclasses.asdict(RULE), "rule": RULE.describe()},
    trained_with={"backbone": "lite0", "learning_rate": 0.001},
    temperature=1.3,
)


def test_the_step_output_leaves_out_what_is_not_known_and_reads_back_the_same() -> None:
    output = SUMMARY.to_dict()
    assert "paired_test" not in output and "serving" not in output
    assert output["accuracy_ci95"] == [0.81, 0.97]
    # KFP hands a dict output on as JSON, whole numbers as floats
    passed = json.loads(json.dumps(output).replace('"correct": 45', '"correct": 45.0'))
    assert EvaluationSummary.from_dict(passed) == SUMMARY
    assert EvaluationSummary.from_dict(passed).rule == RULE


def test_infra_validation_completes_it_with_the_serving_figures_and_the_decision() -> None:
    figures = {"latency_p95_ms": 12.5, "model_mb": 9.1, "load_seconds": 3.0}
    completed = SUMMARY.completed(figures, "deploy: accurate and fast")
    assert completed.to_dict()["serving"] == figures
    assert completed.decision == "deploy: accurate and fast"
    assert EvaluationSummary.from_dict(completed.to_dict()) == completed
