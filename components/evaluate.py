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
    """Both models through the serving signature; champion_accuracy is -1 when none serves.

    Models are read by URI through the storage seam (on Vertex AI the champion's registry URI
    is ``gs://``). When the new model is the served one itself (same data and parameters: its
    training was cached), it is scored once and the decision says so.
    """
    import logging
    from collections import namedtuple

    from components.lib.artifacts import write_metadata_file
    from components.lib.evaluation.metrics import (
        deployment_decision,
        evaluate_champion,
        evaluate_saved_model,
    )
    from components.lib.evaluation.report import build_report
    from components.lib.storage import normalized_uri
    from components.lib.targets import champion_version

    logger = logging.getLogger(__name__)
    evaluation = evaluate_saved_model(model.uri, raw_data.path)
    served = champion_version(target, local_state_dir, project, location, endpoint_display_name)
    itself = served is not None and normalized_uri(served.source_uri) == normalized_uri(model.uri)
    if itself:
        logger.info("the new model is %s, the served one: scored once", served.resource_name)
        champion = evaluation
    else:
        champion = evaluate_champion(served.artifact_uri if served else None, raw_data.path)
    champion_accuracy = champion.accuracy if champion else None
    deploy, reason = deployment_decision(
        evaluation.accuracy, min_accuracy, champion_accuracy, max_regression
    )
    if itself:
        reason = f"{reason} (the same model as {served.resource_name}, served already)"
    logger.info("decision: %s", reason)

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
