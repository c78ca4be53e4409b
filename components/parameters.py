"""Pipeline step: check every parameter against its allowed values before any other step runs.

The first step of every run: a run started from the Vertex AI console (or a schedule), which no
CLI checked, fails here in seconds with every problem in one line, instead of steps later.
"""

from kfp import dsl

from components.images import PLACEHOLDERS


@dsl.component(base_image=PLACEHOLDERS.light, install_kfp_package=False)
def check_parameters(
    data_uri: str,
    eval_fraction: float,
    min_image_size: int,
    max_unusable_share: float,
    backbone: str,
    image_size: int,
    epochs: int,
    learning_rate: float,
    fine_tune_epochs: int,
    fine_tune_learning_rate: float,
    fine_tune_from_block: int,
    batch_size: int,
    dropout: float,
    validation_fraction: float,
    early_stopping_patience: int,
    label_smoothing: float,
    brightness_contrast: float,
    imbalance_ratio: float,
    seed: int,
    min_accuracy: float,
    max_regression: float,
    max_latency_p95_ms: float,
    max_model_size_mb: float,
    max_load_seconds: float,
    min_replicas: int,
    max_replicas: int,
    serving_accelerator_count: int,
    traffic_percentage: int,
    target: str,
    local_state_dir: str,
    tuning_trials: int,
) -> None:
    """Raises ValueError naming every parameter outside its allowed values
    (``components.lib.parameters``), and a local target's unusable state folder."""
    from components.lib.parameters import run_problems

    problems = run_problems(locals())
    if problems:
        raise ValueError("; ".join(problems))
