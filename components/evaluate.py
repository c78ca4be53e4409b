"""Pipeline step: score the new model (challenger) and the served one (champion) on the eval split,
decide whether to deploy, and write the metrics and the HTML report."""

from typing import NamedTuple

from kfp import dsl

from components.images import PLACEHOLDERS


@dsl.component(base_image=PLACEHOLDERS.cpu, install_kfp_package=False)
def evaluate_model(
    raw_data: dsl.Input[dsl.Dataset],
    model: dsl.Input[dsl.Model],
    min_accuracy: float,
    max_regression: float,
    allow_class_change: bool,
    max_latency_p95_ms: float,
    max_model_size_mb: float,
    max_load_seconds: float,
    endpoint_display_name: str,
    target: str,
    project: str,
    location: str,
    local_state_dir: str,
    metrics: dsl.Output[dsl.Metrics],
    classification_metrics: dsl.Output[dsl.ClassificationMetrics],
    report: dsl.Output[dsl.HTML],
    model_evaluation: dsl.Output[dsl.Artifact],
) -> NamedTuple(
    "EvaluationOutputs",
    [
        ("accuracy", float),
        ("champion_accuracy", float),
        ("deploy", bool),
        ("reason", str),
        ("summary", dict),
    ],
):
    """Both models through the serving signature, compared photo by photo; champion_accuracy
    is -1 when none was compared (none serves, or it has other classes: ``summary`` says which
    and why, with the accuracy's confidence interval, the paired test, the calibration error
    and the gate rule).

    Models are read by URI through the storage seam (on Vertex AI the champion's registry URI
    is ``gs://``). When the new model is the served one itself (same data and parameters: its
    training was cached), it is scored once and the decision says so. The champion is not
    scored again when its evaluation in the registry is of the same eval photos (fingerprint):
    its per-photo results are read back, and the champion line says which it was.
    ``model_evaluation`` holds this model's evaluation as the registry will keep it, and its
    per-photo results (the infra validation step completes it; upload attaches it to the new
    version). The decision is on accuracy; the rule's serving budgets (``gate`` in ``summary``)
    are applied by infra validation, which has the figures. TFLite models exported with it
    (``export_tflite``) are scored on the same photos: ``summary["tflite"]``, the metrics and
    the report give each one's accuracy, its change from the SavedModel's and its size.
    """
    import dataclasses
    import logging
    from collections import namedtuple

    from components.lib.artifacts import write_metadata_file
    from components.lib.data.sources import read_source_description
    from components.lib.evaluation.edge import evaluate_edge_models
    from components.lib.evaluation.metrics import (
        COMPARED,
        Champion,
        GateRule,
        deployment_decision,
        evaluate_saved_model,
    )
    from components.lib.evaluation.model_evaluation import (
        champion_from_registry,
        write_model_evaluation,
    )
    from components.lib.evaluation.report import Provenance, build_report
    from components.lib.storage import normalized_uri
    from components.lib.targets import champion_version, model_registry
    from components.lib.tuning.study import STUDY

    logger = logging.getLogger(__name__)
    evaluation = evaluate_saved_model(model.uri, raw_data.path)
    edge = evaluate_edge_models(model.uri, raw_data.path)
    served = champion_version(target, local_state_dir, project, location, endpoint_display_name)
    itself = served is not None and normalized_uri(served.source_uri) == normalized_uri(model.uri)
    if itself:
        logger.info("the new model is %s, the served one: scored once", served.resource_name)
        champion = Champion(COMPARED, evaluation)
    else:
        registry = model_registry(target, local_state_dir, project, location)
        recorded = registry.list_evaluations(served) if served else []
        champion = champion_from_registry(
            {record.fingerprint: record.rows_uri for record in recorded},
            served.artifact_uri if served else None,
            raw_data.path,
            evaluation,
        )
    rule = GateRule(
        min_accuracy,
        max_regression,
        allow_class_change,
        max_latency_p95_ms,
        max_model_size_mb,
        max_load_seconds,
    )
    decision = deployment_decision(evaluation, champion, rule)
    if itself:
        reason = f"{decision.reason} (the same model as {served.resource_name}, served already)"
        decision = dataclasses.replace(decision, reason=reason)
    logger.info("decision: %s", decision.reason)

    low, high = evaluation.accuracy_interval
    ece_before, ece_after = evaluation.uncalibrated_error(), evaluation.calibration_error()
    summary = {  # KFP passes no None inside a dict: what is not known is left out
        "accuracy_ci95": [round(low, 4), round(high, 4)],
        "correct": evaluation.correct,
        "eval_images": evaluation.count,
        "eval_split": read_source_description(raw_data.path).get("eval_split", ""),
        "champion_status": champion.status,
        "champion": champion.describe(),
        "eval_fingerprint": evaluation.fingerprint,
        "paired_test": decision.comparison.to_dict() if decision.comparison else None,
        "temperature": evaluation.temperature,
        "ece_before": None if ece_before is None else round(ece_before, 4),
        "ece_after": None if ece_after is None else round(ece_after, 4),
        "calibration": evaluation.calibration_decision or None,
        "gate": {**dataclasses.asdict(rule), "rule": rule.describe()},
        "trained_with": STUDY.chosen(model.metadata.get("training_config", {})),
        "tflite": [score.to_dict(evaluation) for score in edge] or None,
    }
    summary = {name: value for name, value in summary.items() if value is not None}
    metrics.log_metric("accuracy", round(evaluation.accuracy, 4))
    metrics.log_metric("accuracy_ci95_low", round(low, 4))
    metrics.log_metric("accuracy_ci95_high", round(high, 4))
    metrics.log_metric("macro_f1", round(evaluation.macro_f1, 4))
    metrics.log_metric("eval_images", evaluation.count)
    metrics.log_metric("min_accuracy", min_accuracy)
    metrics.log_metric("max_regression", max_regression)
    if champion.accuracy is not None:
        metrics.log_metric("champion_accuracy", round(champion.accuracy, 4))
    if decision.comparison:
        metrics.log_metric("mcnemar_p_value", round(decision.comparison.p_value, 4))
    for name in ("ece_before", "ece_after", "temperature"):
        if name in summary:
            metrics.log_metric(name, round(summary[name], 4))
    for figures in summary.get("tflite", []):
        metrics.log_metric(f"tflite_{figures['kind']}_accuracy", figures["accuracy"])
        metrics.log_metric(f"tflite_{figures['kind']}_mb", round(figures["size_bytes"] / 1e6, 3))
    metrics.log_metric("deploy", decision.deploy)
    metrics.metadata["decision"] = decision.reason
    metrics.metadata["champion"] = champion.describe()
    metrics.metadata["champion_status"] = champion.status
    metrics.metadata["gate_rule"] = rule.describe()
    if summary["eval_split"]:
        metrics.metadata["eval_split"] = summary["eval_split"]
    for name, value in evaluation.precision().items():
        metrics.log_metric(f"precision_{name}", round(value, 4))
    for name, value in evaluation.recall().items():
        metrics.log_metric(f"recall_{name}", round(value, 4))
    classification_metrics.log_confusion_matrix(evaluation.class_names, evaluation.confusion_matrix)
    write_metadata_file(metrics)
    write_metadata_file(classification_metrics)
    write_model_evaluation(
        evaluation, raw_data.path, model_evaluation.path, model_evaluation.uri, raw_data.uri
    )
    with open(report.path, "w") as file:
        file.write(
            build_report(
                evaluation,
                model.metadata.get("history", {}),
                decision,
                champion,
                rule,
                summary["eval_split"],
                Provenance.of(raw_data.uri, model.uri, served.resource_name if itself else ""),
                edge,
            )
        )
    outputs = namedtuple(
        "EvaluationOutputs", ["accuracy", "champion_accuracy", "deploy", "reason", "summary"]
    )
    champion_output = -1.0 if champion.accuracy is None else champion.accuracy
    return outputs(evaluation.accuracy, champion_output, decision.deploy, decision.reason, summary)
