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
    from collections import namedtuple

    from components.lib.artifacts import write_metadata_file
    from components.lib.evaluation.candidate import ServedModel, evaluate_candidate, log_evaluation
    from components.lib.evaluation.rule import GateRule
    from components.lib.targets import champion_version, model_registry
    from components.lib.tuning.study import STUDY

    version = champion_version(target, local_state_dir, project, location, endpoint_display_name)
    served = (
        None
        if version is None
        else ServedModel(
            version.resource_name,
            version.artifact_uri,
            version.source_uri,
            lambda: {
                record.fingerprint: record.rows_uri
                for record in model_registry(
                    target, local_state_dir, project, location
                ).list_evaluations(version)
            },
        )
    )
    rule = GateRule(
        min_accuracy,
        max_regression,
        allow_class_change,
        max_latency_p95_ms,
        max_model_size_mb,
        max_load_seconds,
    )
    result = evaluate_candidate(
        model.uri,
        model.metadata,
        raw_data.path,
        raw_data.uri,
        rule,
        served,
        STUDY.chosen(model.metadata.get("training_config", {})),
        model_evaluation.path,
        model_evaluation.uri,
        report.path,
    )
    log_evaluation(result, metrics, classification_metrics)
    write_metadata_file(metrics)
    write_metadata_file(classification_metrics)
    outputs = namedtuple(
        "EvaluationOutputs", ["accuracy", "champion_accuracy", "deploy", "reason", "summary"]
    )
    return outputs(
        result.evaluation.accuracy,
        result.champion_accuracy,
        result.decision.deploy,
        result.decision.reason,
        result.summary.to_dict(),
    )
