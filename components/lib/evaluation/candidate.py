"""The evaluate step's work: the new model (challenger) against the served one (champion).

``evaluate_candidate`` scores both through the serving signature on the eval split, decides
with the gate rule, writes the evaluation the registry keeps and the HTML report, and returns
the typed result; ``log_evaluation`` puts it on the step's KFP metrics artifacts. The step
itself only asks the target which version serves (the library's targets are not evaluation's
to import) and hands it in as a ``ServedModel``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from components.lib.data.sources import read_source_description
from components.lib.evaluation.edge import EdgeScore, evaluate_edge_models
from components.lib.evaluation.metrics import (
    COMPARED,
    Champion,
    Decision,
    Evaluation,
    GateRule,
    deployment_decision,
    evaluate_saved_model,
)
from components.lib.evaluation.model_evaluation import (
    champion_from_registry,
    write_model_evaluation,
)
from components.lib.evaluation.report import Provenance, build_report
from components.lib.evaluation.summary import EvaluationSummary
from components.lib.storage import normalized_uri

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """The version the endpoint serves (the champion): its name, where the registry keeps it,
    the artifact it was registered from, and its recorded evaluations' per-photo results by
    eval fingerprint (asked only when it is scored against the challenger)."""

    resource_name: str
    artifact_uri: str
    source_uri: str
    recorded_rows: Callable[[], dict[str, str]]


@dataclass(frozen=True)
class CandidateEvaluation:
    """The challenger's evaluation, the champion as found, the decision and its summary."""

    evaluation: Evaluation
    champion: Champion
    decision: Decision
    rule: GateRule
    edge: list[EdgeScore]
    summary: EvaluationSummary

    @property
    def champion_accuracy(self) -> float:
        """The champion's accuracy, -1 when none was compared (the step's output)."""
        return -1.0 if self.champion.accuracy is None else self.champion.accuracy


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def evaluate_candidate(
    model_uri: str,
    model_metadata: dict[str, Any],
    data_dir: str,
    data_uri: str,
    rule: GateRule,
    served: ServedModel | None,
    trained_with: dict[str, Any],
    model_evaluation_dir: str,
    model_evaluation_uri: str,
    report_path: str,
) -> CandidateEvaluation:
    """Score the model at ``model_uri`` and the ``served`` one on ``data_dir``'s eval split,
    decide by ``rule``, and write the registry's evaluation and the report.

    When the new model is the served one itself (its training was cached), it is scored once
    and the decision says so. The champion is not scored again when its recorded evaluation
    is of the same eval photos (fingerprint): its per-photo results are read back.
    """
    evaluation = evaluate_saved_model(model_uri, data_dir)
    edge = evaluate_edge_models(model_uri, data_dir)
    itself = served is not None and normalized_uri(served.source_uri) == normalized_uri(model_uri)
    if itself:
        logger.info("the new model is %s, the served one: scored once", served.resource_name)
        champion = Champion(COMPARED, evaluation)
    else:
        champion = champion_from_registry(
            served.recorded_rows() if served else {},
            served.artifact_uri if served else None,
            data_dir,
            evaluation,
        )
    decision = deployment_decision(evaluation, champion, rule)
    if itself:
        reason = f"{decision.reason} (the same model as {served.resource_name}, served already)"
        decision = dataclasses.replace(decision, reason=reason)
    logger.info("decision: %s", decision.reason)

    ece_before, ece_after = evaluation.uncalibrated_error(), evaluation.calibration_error()
    low, high = evaluation.accuracy_interval
    summary = EvaluationSummary(
        accuracy_ci95=(round(low, 4), round(high, 4)),
        correct=evaluation.correct,
        eval_images=evaluation.count,
        eval_split=read_source_description(data_dir).get("eval_split", ""),
        champion_status=champion.status,
        champion=champion.describe(),
        eval_fingerprint=evaluation.fingerprint,
        gate={**dataclasses.asdict(rule), "rule": rule.describe()},
        trained_with=trained_with,
        paired_test=decision.comparison.to_dict() if decision.comparison else None,
        temperature=evaluation.temperature,
        ece_before=_rounded(ece_before),
        ece_after=_rounded(ece_after),
        calibration=evaluation.calibration_decision or None,
        tflite=[score.to_dict(evaluation) for score in edge] or None,
    )
    write_model_evaluation(
        evaluation, data_dir, model_evaluation_dir, model_evaluation_uri, data_uri
    )
    with open(report_path, "w") as file:
        file.write(
            build_report(
                evaluation,
                model_metadata.get("history", {}),
                decision,
                champion,
                rule,
                summary.eval_split,
                Provenance.of(data_uri, model_uri, served.resource_name if itself else ""),
                edge,
            )
        )
    return CandidateEvaluation(evaluation, champion, decision, rule, edge, summary)


def log_evaluation(result: CandidateEvaluation, metrics: Any, classification_metrics: Any) -> None:
    """Log ``result`` on the step's ``Metrics`` and ``ClassificationMetrics`` artifacts (the
    console's run view compares runs by them)."""
    evaluation, summary, rule = result.evaluation, result.summary, result.rule
    low, high = summary.accuracy_ci95
    metrics.log_metric("accuracy", round(evaluation.accuracy, 4))
    metrics.log_metric("accuracy_ci95_low", low)
    metrics.log_metric("accuracy_ci95_high", high)
    metrics.log_metric("macro_f1", round(evaluation.macro_f1, 4))
    metrics.log_metric("eval_images", evaluation.count)
    metrics.log_metric("min_accuracy", rule.min_accuracy)
    metrics.log_metric("max_regression", rule.max_regression)
    if result.champion.accuracy is not None:
        metrics.log_metric("champion_accuracy", round(result.champion.accuracy, 4))
    if result.decision.comparison:
        metrics.log_metric("mcnemar_p_value", round(result.decision.comparison.p_value, 4))
    for name in ("ece_before", "ece_after", "temperature"):
        value = getattr(summary, name)
        if value is not None:
            metrics.log_metric(name, round(value, 4))
    for figures in summary.tflite or []:
        metrics.log_metric(f"tflite_{figures['kind']}_accuracy", figures["accuracy"])
        metrics.log_metric(f"tflite_{figures['kind']}_mb", round(figures["size_bytes"] / 1e6, 3))
    metrics.log_metric("deploy", result.decision.deploy)
    metrics.metadata["decision"] = result.decision.reason
    metrics.metadata["champion"] = summary.champion
    metrics.metadata["champion_status"] = summary.champion_status
    metrics.metadata["gate_rule"] = rule.describe()
    if summary.eval_split:
        metrics.metadata["eval_split"] = summary.eval_split
    for name, value in evaluation.precision().items():
        metrics.log_metric(f"precision_{name}", round(value, 4))
    for name, value in evaluation.recall().items():
        metrics.log_metric(f"recall_{name}", round(value, 4))
    classification_metrics.log_confusion_matrix(evaluation.class_names, evaluation.confusion_matrix)
