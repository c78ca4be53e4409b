"""The study as a Vertex AI hyperparameter tuning job: the trials' worker pool (what each
trial runs), and the trials read back from the finished job.

The job itself is google-cloud-pipeline-components' ``HyperparameterTuningJobRunOp`` in the
pipeline; its study spec is ``STUDY`` serialised at compile time. Imports the Vertex AI SDK only
to read the job back.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from components.lib.tuning.study import STUDY, Study, Trial

logger = logging.getLogger(__name__)

TRIAL_MODULE = "components.lib.tuning.trial"
_API_VERSION_PREFIX = "/v1/"


def worker_pool_specs(
    image: str,
    raw_data: str,
    settings: dict[str, Any],
    machine_type: str,
    accelerator_type: str = "",
    accelerator_count: int = 0,
) -> list[dict[str, Any]]:
    """One machine per trial, running ``python3 -m components.lib.tuning.trial`` in the
    pipeline ``image`` on the validated images at ``raw_data`` (``gs://``) with the trial
    ``settings`` (``TrialSettings`` as a dict); Vertex AI appends the trial's parameters."""
    machine: dict[str, Any] = {"machine_type": machine_type}
    if accelerator_type and accelerator_count:
        machine |= {"accelerator_type": accelerator_type, "accelerator_count": accelerator_count}
    return [
        {
            "machine_spec": machine,
            "replica_count": 1,
            "container_spec": {
                "image_uri": image,
                "command": ["python3", "-m", TRIAL_MODULE],
                "args": ["--raw-data", raw_data, "--settings", json.dumps(settings)],
            },
        }
    ]


def job_name(gcp_resources: str) -> str:
    """The tuning job's resource name in the ``gcp_resources`` JSON the tuning op writes."""
    resources = json.loads(gcp_resources).get("resources", [])
    uris = [r.get("resourceUri", "") for r in resources]
    names = [uri.split(_API_VERSION_PREFIX, 1)[1] for uri in uris if _API_VERSION_PREFIX in uri]
    if len(names) != 1 or "/hyperparameterTuningJobs/" not in names[0]:
        raise ValueError(f"gcp_resources names no one hyperparameter tuning job: {gcp_resources}")
    return names[0]


def read_trials(name: str, study: Study = STUDY) -> list[Trial]:
    """The trials of the tuning job ``name`` as ``Trial`` records: parameters typed by the
    study, the final measurement of its metric (None for a trial without one), seconds from
    start to end."""
    from google.cloud import aiplatform

    from components.lib.targets.vertex import call_vertex

    job = call_vertex(
        f"read the hyperparameter tuning job {name}",
        lambda: aiplatform.HyperparameterTuningJob.get(name),
    )
    trials = []
    for trial in job.trials:
        values = {parameter.parameter_id: parameter.value for parameter in trial.parameters}
        metrics = {m.metric_id: m.value for m in trial.final_measurement.metrics}
        seconds = (
            (trial.end_time - trial.start_time).total_seconds()
            if trial.start_time and trial.end_time
            else 0.0
        )
        trials.append(
            Trial(
                trial=trial.id,
                parameters=study.parse(values),
                metric=metrics.get(study.metric),
                seconds=round(seconds, 1),
                state=trial.state.name,
            )
        )
    return trials
