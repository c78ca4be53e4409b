"""Pipeline step: register the trained model as a new version in the model registry."""

from kfp import dsl

from components.images import PLACEHOLDERS
from components.lib.artifacts import VertexModel


@dsl.component(base_image=PLACEHOLDERS.light, install_kfp_package=False)
def upload_model(
    model: dsl.Input[dsl.Model],
    model_evaluation: dsl.Input[dsl.Artifact],
    accuracy: float,
    champion_accuracy: float,
    decision: str,
    evaluation: dict,
    model_display_name: str,
    pipeline_job: str,
    serving_image: str,
    accelerator_type: str,
    target: str,
    project: str,
    location: str,
    local_state_dir: str,
    vertex_model: dsl.Output[VertexModel],
) -> str:
    """Returns the new version's resource name, ``projects/P/locations/L/models/M@N``.

    The version gets the aliases ``default`` and one naming the pipeline job, labels with the job,
    both accuracies (champion_accuracy -1: none compared), the champion's status and the gate
    rule's settings, and as its description the decision's reason and the exact rule, so the
    registry says why and by which rule each version was deployed; ``vertex_model`` records it
    for lineage. A model already registered (a re-run whose training was cached) is not
    registered again: its version is returned, and the log says so. The version carries
    ``model_evaluation`` (what the evaluate step wrote) as its evaluation in the registry, once
    per set of eval photos. TFLite models exported with the SavedModel (``export_tflite``) are
    files under ``tflite/`` of the artifact, so the version keeps them; a label per model holds
    its eval accuracy.
    """
    import logging

    from components.lib.artifacts import describe_resource
    from components.lib.evaluation.stored import read_model_evaluation
    from components.lib.evaluation.summary import EvaluationSummary
    from components.lib.targets import model_registry, resource_uri
    from components.lib.targets.base import ModelEvaluationRecord, version_alias

    summary = EvaluationSummary.from_dict(evaluation)
    rule = summary.rule
    registry = model_registry(
        target, local_state_dir, project, location, serving_image, gpu=bool(accelerator_type)
    )
    logger = logging.getLogger(__name__)
    version = registry.find_version(model_display_name, model.uri)
    if version is not None:
        logger.info("%s is this model already: not registered again", version.resource_name)
    else:
        champion = f"{champion_accuracy:.4f}" if champion_accuracy >= 0 else "none"
        test = summary.paired_test or {}
        version = registry.upload_version(
            display_name=model_display_name,
            artifact_dir=model.uri,
            metrics={"accuracy": accuracy, "champion_accuracy": champion_accuracy},
            labels={
                "pipeline_job": pipeline_job,
                "accuracy": f"{accuracy:.4f}",
                "champion_accuracy": champion,
                "champion_status": summary.champion_status,
                **rule.labels(),
                **({"mcnemar_p": f"{test['p_value']:.4f}"} if test else {}),
                **{
                    f"tflite_{edge['kind']}_accuracy": f"{edge['accuracy']:.4f}"
                    for edge in summary.tflite or []
                },
            },
            aliases=[version_alias(pipeline_job)],
            description=f"{decision}. Rule: {rule.describe()}",
        )
        logger.info("registered %s", version.resource_name)
    record = registry.import_evaluation(
        version, ModelEvaluationRecord(**read_model_evaluation(model_evaluation.path))
    )
    logger.info("%s carries the evaluation %s", version.resource_name, record.name)
    describe_resource(
        vertex_model, version.resource_name, resource_uri(target, location, version.resource_name)
    )
    return version.resource_name
