"""Pipeline step: score the new model (challenger) and the served one (champion) on the eval split,
decide whether to deploy, and write the metrics and the HTML report."""

from typing import NamedTuple

from kfp import dsl

from components import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def evaluate_model(
    raw_data: dsl.Input[dsl.Dataset],
    model: dsl.Input[dsl.Model],
    min_accuracy: float,
    max_regression: float,
    endpoint_display_name: str,
    target: str,
    project: str,
    location: str,
    local_state_dir: str,
    metrics: dsl.Output[dsl.Metrics],
    classification_metrics: dsl.Output[dsl.ClassificationMetrics],
    report: dsl.Output[dsl.HTML],
) -> NamedTuple(
    "EvaluationOutputs",
    [("accuracy", float), ("champion_accuracy", float), ("deploy", bool), ("reason", str)],
):
    """Both models through the serving signature; champion_accuracy is -1 when none serves."""
    import logging
    from collections import namedtuple

    from components.lib.artifacts import write_metadata_file
    from components.lib.evaluation.metrics import (
        deployment_decision,
        evaluate_champion,
        evaluate_saved_model,
    )
    from components.lib.evaluation.report import build_report
    from components.lib.targets import champion_model_dir

    evaluation = evaluate_saved_model(model.path, raw_data.path)
    champion = evaluate_champion(
        champion_model_dir(target, local_state_dir, project, location, endpoint_display_name),
        raw_data.path,
    )
    champion_accuracy = champion.accuracy if champion else None
    deploy, reason = deployment_decision(
        evaluation.accuracy, min_accuracy, champion_accuracy, max_regression
    )
    logging.getLogger(__name__).info("decision: %s", reason)

    metrics.log_metric("accuracy", round(evaluation.accuracy, 4))
    metrics.log_metric("macro_f1", round(evaluation.macro_f1, 4))
    metrics.log_metric("eval_images", evaluation.count)
    metrics.log_metric("min_accuracy", min_accuracy)
    metrics.log_metric("max_regression", max_regression)
    if champion_accuracy is not None:
        metrics.log_metric("champion_accuracy", round(champion_accuracy, 4))
    metrics.log_metric("deploy", deploy)
    metrics.metadata["decision"] = reason
    for name, value in evaluation.precision().items():
        metrics.log_metric(f"precision_{name}", round(value, 4))
    for name, value in evaluation.recall().items():
        metrics.log_metric(f"recall_{name}", round(value, 4))
    classification_metrics.log_confusion_matrix(evaluation.class_names, evaluation.confusion_matrix)
    write_metadata_file(metrics)
    write_metadata_file(classification_metrics)
    with open(report.path, "w") as file:
        file.write(
            build_report(evaluation, model.metadata.get("history", {}), deploy, reason, champion)
        )
    outputs = namedtuple("EvaluationOutputs", ["accuracy", "champion_accuracy", "deploy", "reason"])
    champion_output = -1.0 if champion_accuracy is None else champion_accuracy
    return outputs(evaluation.accuracy, champion_output, deploy, reason)
