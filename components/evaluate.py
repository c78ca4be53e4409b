"""Pipeline step: score the exported model on the eval split and decide whether to deploy it."""

from typing import NamedTuple

from kfp import dsl

from components import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def evaluate_model(
    raw_data: dsl.Input[dsl.Dataset],
    model: dsl.Input[dsl.Model],
    min_accuracy: float,
    metrics: dsl.Output[dsl.Metrics],
    classification_metrics: dsl.Output[dsl.ClassificationMetrics],
) -> NamedTuple("EvaluationOutputs", [("accuracy", float), ("deploy", bool), ("reason", str)]):
    """Accuracy, per-class precision/recall and confusion matrix, through the serving signature."""
    import logging
    from collections import namedtuple

    from components.lib.artifacts import write_metadata_file
    from components.lib.evaluation import deployment_decision, evaluate_saved_model

    evaluation = evaluate_saved_model(model.path, raw_data.path)
    deploy, reason = deployment_decision(evaluation.accuracy, min_accuracy)
    logging.getLogger(__name__).info("decision: %s", reason)

    metrics.log_metric("accuracy", round(evaluation.accuracy, 4))
    metrics.log_metric("eval_images", evaluation.count)
    metrics.log_metric("min_accuracy", min_accuracy)
    metrics.log_metric("deploy", deploy)
    for name, value in evaluation.precision().items():
        metrics.log_metric(f"precision_{name}", round(value, 4))
    for name, value in evaluation.recall().items():
        metrics.log_metric(f"recall_{name}", round(value, 4))
    classification_metrics.log_confusion_matrix(evaluation.class_names, evaluation.confusion_matrix)
    write_metadata_file(metrics)
    write_metadata_file(classification_metrics)
    outputs = namedtuple("EvaluationOutputs", ["accuracy", "deploy", "reason"])
    return outputs(evaluation.accuracy, deploy, reason)
