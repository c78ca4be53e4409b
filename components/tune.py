"""Pipeline steps of hyperparameter tuning (``tuning_trials`` > 0; README: Hyperparameter
tuning). Each returns the parameters that train the final model, named as the train step's
(``STUDY``'s parameters, in its order): the given ones when tuning is off, the best trial's
otherwise. On Vertex AI the trials are a Vertex AI tuning job's (``tuning_job_spec`` gives it
its worker pool, ``best_trial`` reads it back); elsewhere ``search_hyperparameters`` runs them.
"""

from typing import NamedTuple

from kfp import dsl

from components.images import PLACEHOLDERS


@dsl.component(base_image=PLACEHOLDERS.light, install_kfp_package=False)
def plan_tuning(tuning_trials: int, pipeline_root: str) -> NamedTuple(
    "TuningPlan", [("mode", str), ("parallel_trials", int)]
):
    """How this run tunes (``tuning_mode``: off, vertex or local) and, on Vertex AI, how many
    trials run at once."""
    import logging
    from collections import namedtuple

    from components.lib.tuning.study import OFF, STUDY, VERTEX, tuning_mode

    mode = tuning_mode(tuning_trials, pipeline_root)
    parallel = STUDY.parallel(tuning_trials)
    if mode != OFF:
        where = (
            f"a Vertex AI tuning job, {parallel} at once"
            if mode == VERTEX
            else "one after another in this run's search step"
        )
        logging.getLogger(__name__).info(
            "tuning: %d trials of %s, %s", tuning_trials, STUDY.metric, where
        )
    return namedtuple("TuningPlan", ["mode", "parallel_trials"])(mode, parallel)


@dsl.component(base_image=PLACEHOLDERS.light, install_kfp_package=False)
def given_hyperparameters(
    learning_rate: float,
    fine_tune_learning_rate: float,
    fine_tune_from_block: int,
    backbone: str,
) -> NamedTuple(
    "Hyperparameters",
    [
        ("learning_rate", float),
        ("fine_tune_learning_rate", float),
        ("fine_tune_from_block", int),
        ("backbone", str),
    ],
):
    """No tuning: the pipeline's own parameters, passed through (an unknown backbone is refused
    here, before any work)."""
    from components.lib.tuning.study import STUDY

    given = {
        "learning_rate": learning_rate,
        "fine_tune_learning_rate": fine_tune_learning_rate,
        "fine_tune_from_block": fine_tune_from_block,
        "backbone": backbone,
    }
    return tuple(STUDY.parse(given).values())


@dsl.component(base_image=PLACEHOLDERS.gpu, install_kfp_package=False)
def search_hyperparameters(
    raw_data: dsl.Input[dsl.Dataset],
    tuning_trials: int,
    image_size: int,
    validation_fraction: float,
    epochs: int,
    fine_tune_epochs: int,
    batch_size: int,
    dropout: float,
    label_smoothing: float,
    brightness_contrast: float,
    early_stopping_patience: int,
    imbalance_ratio: float,
    seed: int,
    trials: dsl.Output[dsl.Markdown],
) -> NamedTuple(
    "Hyperparameters",
    [
        ("learning_rate", float),
        ("fine_tune_learning_rate", float),
        ("fine_tune_from_block", int),
        ("backbone", str),
    ],
):
    """The study's trials one after another on the validated images (``search``), each trained
    as the train step trains with the given settings; ``trials`` holds their table."""
    import tempfile

    from components.lib.tuning.search import search
    from components.lib.tuning.settings import TrialSettings
    from components.lib.tuning.study import STUDY, trials_record, trials_table

    settings = TrialSettings.from_step_arguments(locals())  # the parameters above, by name
    with tempfile.TemporaryDirectory(prefix="tuning-") as work_dir:
        results = search(raw_data.path, work_dir, settings, tuning_trials)
    with open(trials.path, "w") as file:
        file.write(trials_table(results, STUDY) + "\n")
    trials.metadata.update(trials_record(results, STUDY))
    return tuple(STUDY.best(results).parameters.values())


@dsl.component(base_image=PLACEHOLDERS.light, install_kfp_package=False)
def tuning_job_spec(
    raw_data: dsl.Input[dsl.Dataset],
    image: str,
    machine_type: str,
    accelerator_type: str,
    accelerator_count: int,
    image_size: int,
    validation_fraction: float,
    epochs: int,
    fine_tune_epochs: int,
    batch_size: int,
    dropout: float,
    label_smoothing: float,
    brightness_contrast: float,
    early_stopping_patience: int,
    imbalance_ratio: float,
    seed: int,
    study: dsl.Output[dsl.Artifact],
) -> NamedTuple("TuningJobSpec", [("worker_pool_specs", list), ("base_output_directory", str)]):
    """The Vertex AI tuning job's trial machine (``image`` on ``machine_type`` with the
    accelerators) and arguments: the validated images' URI and the settings every trial
    shares. The job writes under ``study``'s folder."""
    import dataclasses
    from collections import namedtuple

    from components.lib.tuning.settings import TrialSettings
    from components.lib.tuning.vertex import worker_pool_specs

    settings = TrialSettings.from_step_arguments(locals())  # the parameters above, by name
    pools = worker_pool_specs(
        image,
        raw_data.uri,
        dataclasses.asdict(settings),
        machine_type,
        accelerator_type,
        accelerator_count,
    )
    study.metadata.update({"worker_pool_specs": pools})
    return namedtuple("TuningJobSpec", ["worker_pool_specs", "base_output_directory"])(
        pools, study.uri
    )


@dsl.component(base_image=PLACEHOLDERS.light, install_kfp_package=False)
def best_trial(gcp_resources: str, trials: dsl.Output[dsl.Markdown]) -> NamedTuple(
    "Hyperparameters",
    [
        ("learning_rate", float),
        ("fine_tune_learning_rate", float),
        ("fine_tune_from_block", int),
        ("backbone", str),
    ],
):
    """The finished Vertex AI tuning job's best trial (``gcp_resources`` names the job);
    ``trials`` holds the table of its trials."""
    import logging

    from components.lib.tuning.study import STUDY, trials_record, trials_table
    from components.lib.tuning.vertex import job_name, read_trials

    results = read_trials(job_name(gcp_resources))
    table = trials_table(results, STUDY)
    for line in table.splitlines():
        logging.getLogger(__name__).info("%s", line)
    with open(trials.path, "w") as file:
        file.write(table + "\n")
    trials.metadata.update(trials_record(results, STUDY))
    return tuple(STUDY.best(results).parameters.values())
