"""``python -m pipeline.monitoring_pipeline``: compile the small pipeline that a schedule runs
after the deploy: canary review, drift check, and a training run when the photos drifted.

Three steps: ``review-canary`` (promote or roll back the endpoint's canary), ``check-drift``
(the served version's recent requests against its training reference: an HTML report and the
metrics ``drift`` and ``p_value``) and, when drift holds and ``training_template`` is set,
``start-training`` (a run of the training pipeline's compiled file or published template, with
``training_parameters``). docs/monitoring.md shows how to schedule it.
"""

import argparse
import os

from kfp import compiler, dsl

from components.check_drift import check_drift
from components.images import PLACEHOLDERS, ImageError, ImageSet
from components.lib.monitoring.canary import CanaryRule
from components.lib.monitoring.drift import DEFAULT_ALPHA, DEFAULT_PERMUTATIONS
from components.lib.targets.base import VERTEX
from components.review_canary import review_canary
from components.start_training import start_training
from pipeline.compile import add_image_options, image_set
from pipeline.pipeline import run_in_role_images

DEFAULT_OUTPUT = "monitoring-pipeline.yaml"
PIPELINE_NAME = "image-classifier-monitoring"
RULE = CanaryRule()


def build_monitoring_pipeline(images: ImageSet = PLACEHOLDERS):
    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="After the deploy: review the canary, check the photos for drift, start "
        "the training pipeline when they drifted.",
    )
    def monitoring_pipeline(
        endpoint_display_name: str,
        project: str = "",
        location: str = "",
        target: str = VERTEX,
        local_state_dir: str = "",
        sample_size: int = 200,
        alpha: float = DEFAULT_ALPHA,
        permutations: int = DEFAULT_PERMUTATIONS,
        review_canary_first: bool = True,
        metrics_url: str = "",
        since_hours: float = 24.0,
        feedback_uri: str = "",
        min_requests: int = RULE.min_requests,
        max_error_rate: float = RULE.max_error_rate,
        max_latency_p95_ms: float = RULE.max_latency_p95_ms,
        min_feedback: int = RULE.min_feedback,
        max_accuracy_drop: float = RULE.max_accuracy_drop,
        training_template: str = "",
        training_parameters: dict = {},  # noqa: B006 (a pipeline parameter's default)
        training_pipeline_root: str = "",
        training_service_account: str = "",
    ) -> None:
        """Each parameter as the CLIs' flags of the same names (python -m pipeline.canary,
        python -m pipeline.monitor; endpoint_display_name: --endpoint, required, as the
        training run's summary names it); project and location: the job's own when empty."""
        where = {
            "target": target,
            "project": project or "{{$.pipeline_google_cloud_project_id}}",
            "location": location or "{{$.pipeline_google_cloud_location}}",
            "local_state_dir": local_state_dir,
            "endpoint_display_name": endpoint_display_name,
        }
        with dsl.If(review_canary_first == True):  # noqa: E712 (a KFP condition)
            review_canary(
                metrics_url=metrics_url,
                since_hours=since_hours,
                feedback_uri=feedback_uri,
                min_requests=min_requests,
                max_error_rate=max_error_rate,
                max_latency_p95_ms=max_latency_p95_ms,
                min_feedback=min_feedback,
                max_accuracy_drop=max_accuracy_drop,
                **where,
            ).set_display_name("review-canary").set_caching_options(False)
        drift = check_drift(
            sample_size=sample_size, alpha=alpha, permutations=permutations, **where
        )
        drift.set_display_name("check-drift").set_caching_options(False)
        drifted = dsl.If(drift.outputs["Output"] == True)  # noqa: E712 (a KFP condition)
        with drifted, dsl.If(training_template != ""):
            start_training(
                template=training_template,
                project=where["project"],
                location=where["location"],
                pipeline_root=training_pipeline_root,
                parameter_values=training_parameters,
                service_account=training_service_account,
            ).set_display_name("start-training").set_caching_options(False)
        run_in_role_images(images)

    return monitoring_pipeline


def compile_monitoring_pipeline(output: str, images: ImageSet = PLACEHOLDERS) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    compiler.Compiler().compile(build_monitoring_pipeline(images), package_path=output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.monitoring_pipeline",
        description="Compile the monitoring pipeline (canary review, drift check, retraining "
        "on drift) for a Vertex AI schedule.",
    )
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="file to write (%(default)s)")
    add_image_options(parser)
    args = parser.parse_args(argv)
    try:
        images = image_set(args)
    except ImageError as error:
        parser.exit(2, f"error: {error}\n")
    print(compile_monitoring_pipeline(args.output, images))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
