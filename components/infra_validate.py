"""Pipeline step: serve the candidate model as Vertex AI will, before it is registered: the
same answers as evaluate's, its latency, size and load time, held to the gate's budgets."""

from typing import NamedTuple

from kfp import dsl

from components.images import PLACEHOLDERS


@dsl.component(base_image=PLACEHOLDERS.serving, install_kfp_package=False)
def infra_validate(
    model: dsl.Input[dsl.Model],
    raw_data: dsl.Input[dsl.Dataset],
    evaluation: dsl.Input[dsl.Artifact],
    evaluation_report: dsl.Input[dsl.HTML],
    evaluate_deploy: bool,
    evaluate_reason: str,
    evaluation_summary: dict,
    metrics: dsl.Output[dsl.Metrics],
    report: dsl.Output[dsl.HTML],
    model_evaluation: dsl.Output[dsl.Artifact],
) -> NamedTuple("InfraValidationOutputs", [("deploy", bool), ("reason", str), ("summary", dict)]):
    """Runs in the serving image: ``python -m pipeline.serve`` on the model's URI with the
    ``AIP_*`` variables, every eval photo through its predict route at 1 and at 4 clients, each
    answer checked against evaluate's. Fails (nothing is uploaded) when the server cannot load
    the model or answers otherwise. ``deploy`` and ``reason`` are evaluate's decision with the
    serving budgets of its gate rule applied; ``report`` and ``model_evaluation`` are
    evaluate's, completed with the figures, which the metrics also hold."""
    from collections import namedtuple

    from components.lib.artifacts import write_metadata_file
    from components.lib.evaluation.infra_validation import validate_candidate
    from components.lib.evaluation.summary import EvaluationSummary

    result = validate_candidate(
        model.uri,
        raw_data.uri,
        evaluation.path,
        EvaluationSummary.from_dict(evaluation_summary),
        evaluate_deploy,
        evaluate_reason,
        evaluation_report.path,
        model_evaluation.path,
        report.path,
    )
    for name, value in result.figures.to_dict().items():
        metrics.log_metric(name, value)
    metrics.log_metric("deploy", result.deploy)
    metrics.metadata["decision"] = result.reason
    write_metadata_file(metrics)
    outputs = namedtuple("InfraValidationOutputs", ["deploy", "reason", "summary"])
    return outputs(result.deploy, result.reason, result.summary.to_dict())
