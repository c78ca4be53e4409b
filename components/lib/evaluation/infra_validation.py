"""The gate's serving half: the candidate served as Vertex AI will serve it, its figures held to
the serving budgets, and the decision, the evaluation and the report completed with them.

The infra validation step calls ``validate_candidate`` once, after evaluate. The server is
started on the model and asked for every eval photo that evaluate scored; the classes it
serves must be those evaluate recorded (``predictions.jsonl``: the same signature, called in
evaluate's own process), or the step fails, as it does when the server cannot load the model:
such a model never reaches upload. A model over a budget is held back by the gate instead, and
the decision names the budget and by how much.

Light (no NumPy, TensorFlow or matplotlib): it runs in the serving image.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from components.lib.evaluation.rule import GateRule
from components.lib.evaluation.stored import read_model_evaluation, read_rows, write_record
from components.lib.evaluation.summary import SERVING, EvaluationSummary
from components.lib.serving.infra import (
    CONCURRENT_CLIENTS,
    Expected,
    ServingFigures,
    validate_serving,
)
from components.lib.serving.routing import CONTAINER_HEALTH_ROUTE, CONTAINER_PREDICT_ROUTE

_DECISION = re.compile(r'<p id="decision">.*?</p>', re.DOTALL)


@dataclass(frozen=True)
class InfraValidation:
    """The final word on deploying, and what it rests on."""

    deploy: bool
    reason: str
    figures: ServingFigures
    summary: EvaluationSummary


def expected_answers(evaluation_dir: str) -> tuple[list[str], list[Expected]]:
    """The class names and, per eval photo, the class evaluate was served (the highest
    probability, as the signature's CLASSES is), from its evaluation artifact."""
    record = read_model_evaluation(evaluation_dir)
    expected = [
        Expected(
            row["photo"],
            max(range(len(row["probabilities"])), key=row["probabilities"].__getitem__),
        )
        for row in read_rows(evaluation_dir)
    ]
    return list(record["metadata"]["class_names"]), expected


def serving_decision(
    deploy: bool, reason: str, rule: GateRule, figures: ServingFigures
) -> tuple[bool, str]:
    """Evaluate's decision (``deploy``, ``reason``) with the serving budgets applied: a model
    over one is not deployed, and the reason says which budget held it back and by how much; a
    model that passes says its figures against the budgets."""
    over = rule.overruns(figures.single.p95_ms, figures.model_mb, figures.load_seconds)
    if over and deploy:
        held = "; ".join(overrun.describe() for overrun in over)
        return False, f"held back by {held}: not deployed (accuracy gate: {reason})"
    if over:
        return False, f"{reason}; also over {'; '.join(o.describe() for o in over)}"
    if not deploy:
        return False, reason
    kept = (
        f"serving within its budgets (p95 {figures.single.p95_ms:g} <= "
        f"{rule.max_latency_p95_ms:g} ms, {figures.model_mb:g} <= {rule.max_model_size_mb:g} MB, "
        f"healthy in {figures.load_seconds:g} <= {rule.max_load_seconds:g} s)"
    )
    return deploy, f"{reason}; {kept}"


def serving_section(model_uri: str, figures: ServingFigures, rule: GateRule) -> str:
    """The report's table of what infra validation measured, beside the budgets."""
    single, concurrent = figures.single, figures.concurrent
    rows = {
        "served as": f"python -m pipeline.serve with AIP_STORAGE_URI={model_uri}, "
        f"AIP_PREDICT_ROUTE={CONTAINER_PREDICT_ROUTE}, AIP_HEALTH_ROUTE={CONTAINER_HEALTH_ROUTE}",
        "answers": f"{figures.photos} eval photos, one per request, each given the class "
        f"evaluate found, at 1 and at {concurrent.clients} clients",
        "latency, 1 client": f"p50 {single.p50_ms:g} ms, p95 {single.p95_ms:g} ms (budget "
        f"{rule.max_latency_p95_ms:g} ms)",
        f"latency, {concurrent.clients} clients": f"p50 {concurrent.p50_ms:g} ms, p95 "
        f"{concurrent.p95_ms:g} ms",
        "model size": f"{figures.model_mb:g} MB (budget {rule.max_model_size_mb:g} MB)",
        "start to healthy": f"{figures.load_seconds:g} s (budget {rule.max_load_seconds:g} s); "
        f"{figures.loading_answers} health answers 503 while it loaded",
    }
    cells = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>"
        for name, value in rows.items()
    )
    return f'<h2 id="serving">Serving (infra validation)</h2>\n<table class="facts">{cells}</table>'


def report_with_serving(report: str, deploy: bool, reason: str, section: str) -> str:
    """Evaluate's report with the final decision in place of its own and the serving section
    after it; ValueError when the report has no decision paragraph to replace."""
    if not _DECISION.search(report):
        raise ValueError('the evaluation report has no <p id="decision"> to complete')
    verdict = f'<b class="{"deploy" if deploy else "reject"}">Decision</b>'
    decision = f'<p id="decision">{verdict}: {html.escape(reason)}</p>\n{section}'
    return _DECISION.sub(lambda _: decision, report, count=1)


def validate_candidate(
    model_uri: str,
    data_dir: str,
    evaluation_dir: str,
    evaluation_summary: EvaluationSummary,
    evaluate_deploy: bool,
    evaluate_reason: str,
    report_path: str,
    output_evaluation_dir: str,
    output_report_path: str,
    clients: int = CONCURRENT_CLIENTS,
) -> InfraValidation:
    """Serve ``model_uri`` as Vertex AI would on the photos of ``data_dir`` that evaluate scored
    (its evaluation artifact at ``evaluation_dir``), and decide with the gate rule of its
    summary. Writes the evaluation the registry keeps, with the figures in its metadata, to
    ``output_evaluation_dir`` and the report with the serving section to ``output_report_path``.
    InfraValidationError when the server cannot load the model or answers otherwise."""
    class_names, expected = expected_answers(evaluation_dir)
    figures = validate_serving(model_uri, data_dir, expected, class_names, clients)
    rule = evaluation_summary.rule
    deploy, reason = serving_decision(evaluate_deploy, evaluate_reason, rule, figures)
    record = read_model_evaluation(evaluation_dir)
    record["metadata"] = {**record["metadata"], SERVING: figures.to_dict()}
    write_record(output_evaluation_dir, record)
    with open(report_path) as file:
        report = file.read()
    with open(output_report_path, "w") as file:
        file.write(
            report_with_serving(report, deploy, reason, serving_section(model_uri, figures, rule))
        )
    summary = evaluation_summary.completed(figures.to_dict(), reason)
    return InfraValidation(deploy, reason, figures, summary)
