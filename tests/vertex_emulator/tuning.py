"""JobService's hyperparameter tuning jobs, whose trials run later, as the real service runs them.

A created job is PENDING; a thread then runs its trials, ``parallel_trial_count`` at a time, until
``max_trial_count`` have ended, and the job is SUCCEEDED (FAILED when more trials failed than
``max_failed_trial_count`` allows, or all of them). Each trial gets parameters drawn at random
(seeded) from the study spec, as ``RANDOM_SEARCH`` draws them, and runs its worker pool's
container with them appended as ``--name=value``. The emulator runs the project's pipeline image
(by name, in any registry) as a local process of this checkout, with Vertex AI's trial variables:
``CLOUD_ML_TRIAL_ID``, ``CLOUD_ML_HP_METRIC_FILE`` (where ``cloudml-hypertune`` writes), the
``AIP_*`` output folders under the job's ``base_output_directory``, and the emulated storage. The
trial's final measurement is the best (``BEST_MEASUREMENT``, the default) or last value of the
study's metric that it reported (trials run as uid 1000 on Vertex AI: ``metric_file_dir``
moves where ``CLOUD_ML_HP_METRIC_FILE`` points, e.g. to a folder that is not theirs to write);
a trial that exits with an error or reports nothing is
INFEASIBLE. ``GetHyperparameterTuningJob`` shows the trials as they stand.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
from concurrent import futures

from google.cloud import aiplatform_v1 as v1
from google.protobuf import empty_pb2

from tests.vertex_emulator.context import Context, now
from tests.vertex_emulator.custom_jobs import check_worker_pools
from tests.vertex_emulator.iam import Iam
from tests.vertex_emulator.resources import invalid, not_found
from tests.vertex_emulator.serving import PROJECT_ROOT, image_name

JobState = v1.JobState
TrialState = v1.Trial.State
ParameterSpec = v1.StudySpec.ParameterSpec


def _draw(spec: ParameterSpec, rng: random.Random) -> float | str:
    """One value of a parameter, drawn as random search draws it."""
    if "double_value_spec" in spec:
        low, high = spec.double_value_spec.min_value, spec.double_value_spec.max_value
        if spec.scale_type == ParameterSpec.ScaleType.UNIT_LOG_SCALE:
            return math.exp(rng.uniform(math.log(low), math.log(high)))
        return rng.uniform(low, high)
    if "integer_value_spec" in spec:
        return float(
            rng.randint(spec.integer_value_spec.min_value, spec.integer_value_spec.max_value)
        )
    if "categorical_value_spec" in spec:
        return rng.choice(list(spec.categorical_value_spec.values))
    if "discrete_value_spec" in spec:
        return rng.choice(list(spec.discrete_value_spec.values))
    raise invalid(f"Parameter {spec.parameter_id} has no value spec.")


def _argument(value: float | str) -> str:
    """A parameter as Vertex AI writes it on the command line: integers without a fraction."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _check(job: v1.HyperparameterTuningJob) -> None:
    if not job.display_name:
        raise invalid("HyperparameterTuningJob.display_name is required.")
    study = job.study_spec
    if len(study.metrics) != 1 or not study.metrics[0].metric_id:
        raise invalid("study_spec.metrics must hold exactly one metric with a metric_id.")
    if study.metrics[0].goal == v1.StudySpec.MetricSpec.GoalType.GOAL_TYPE_UNSPECIFIED:
        raise invalid("study_spec.metrics[0].goal must be MAXIMIZE or MINIMIZE.")
    if not study.parameters:
        raise invalid("study_spec.parameters must not be empty.")
    for spec in study.parameters:
        if "double_value_spec" in spec or "integer_value_spec" in spec:
            value_spec = (
                spec.double_value_spec if "double_value_spec" in spec else spec.integer_value_spec
            )
            if value_spec.min_value > value_spec.max_value:
                raise invalid(f"Parameter {spec.parameter_id}: min_value exceeds max_value.")
            if (
                spec.scale_type == ParameterSpec.ScaleType.UNIT_LOG_SCALE
                and value_spec.min_value <= 0
            ):
                raise invalid(f"Parameter {spec.parameter_id}: a log scale needs min_value > 0.")
    if job.max_trial_count < 1 or job.parallel_trial_count < 1:
        raise invalid("max_trial_count and parallel_trial_count must be positive.")
    check_worker_pools(job.trial_job_spec.worker_pool_specs, "trial_job_spec")


class TuningJobs:
    """State and RPCs of JobService's hyperparameter tuning jobs."""

    def __init__(self, context: Context, iam: Iam, pipeline_image: str, seed: int = 0) -> None:
        self.context = context
        self.iam = iam
        self.pipeline_image = pipeline_image
        self.jobs: dict[str, v1.HyperparameterTuningJob] = {}
        self._rng = random.Random(seed)
        self._processes: set[subprocess.Popen] = set()
        self._stopped = threading.Event()

    def create_hyperparameter_tuning_job(
        self, request: v1.CreateHyperparameterTuningJobRequest
    ) -> v1.HyperparameterTuningJob:
        parent = self.context.names.parent(request.parent)
        job = v1.HyperparameterTuningJob(request.hyperparameter_tuning_job)
        _check(job)
        self.iam.require_act_as(job.trial_job_spec.service_account)
        job.name = f"{parent}/hyperparameterTuningJobs/{self.context.new_id()}"
        job.state = JobState.JOB_STATE_PENDING
        job.create_time = job.update_time = now()
        with self.context.lock:
            self.jobs[job.name] = job
        threading.Thread(target=self._run, args=(job.name,), name="tuning-job", daemon=True).start()
        return v1.HyperparameterTuningJob(job)

    def get_hyperparameter_tuning_job(
        self, request: v1.GetHyperparameterTuningJobRequest
    ) -> v1.HyperparameterTuningJob:
        with self.context.lock:
            return v1.HyperparameterTuningJob(self._job(request.name))

    def cancel_hyperparameter_tuning_job(
        self, request: v1.CancelHyperparameterTuningJobRequest
    ) -> empty_pb2.Empty:
        with self.context.lock:
            job = self._job(request.name)
            if job.state in (JobState.JOB_STATE_PENDING, JobState.JOB_STATE_RUNNING):
                job.state = JobState.JOB_STATE_CANCELLING
        return empty_pb2.Empty()

    def stop(self) -> None:
        """End the trials still running (the emulator is shutting down)."""
        self._stopped.set()
        for process in list(self._processes):
            if process.poll() is None:
                process.kill()

    def _job(self, name: str) -> v1.HyperparameterTuningJob:
        job = self.jobs.get(self.context.names.canonical(name))
        if job is None:
            raise not_found(f"HyperparameterTuningJob {name}")
        return job

    def _run(self, name: str) -> None:
        with self.context.lock:
            job = self.jobs[name]
            job.state, job.start_time = JobState.JOB_STATE_RUNNING, now()
            count, parallel = job.max_trial_count, job.parallel_trial_count
        with futures.ThreadPoolExecutor(parallel, thread_name_prefix="trial") as pool:
            list(pool.map(lambda number: self._trial(name, str(number)), range(1, count + 1)))
        with self.context.lock:
            succeeded = sum(t.state == TrialState.SUCCEEDED for t in job.trials)
            failed = len(job.trials) - succeeded
            if job.state == JobState.JOB_STATE_CANCELLING:
                job.state = JobState.JOB_STATE_CANCELLED
            elif succeeded == 0 or (
                job.max_failed_trial_count and failed > job.max_failed_trial_count
            ):
                job.state = JobState.JOB_STATE_FAILED
                job.error.code, job.error.message = (
                    9,
                    f"{failed} of {len(job.trials)} trials failed.",
                )
            else:
                job.state = JobState.JOB_STATE_SUCCEEDED
            job.end_time = job.update_time = now()

    def _trial(self, name: str, trial_id: str) -> None:
        with self.context.lock:
            job = self.jobs[name]
            if job.state == JobState.JOB_STATE_CANCELLING or self._stopped.is_set():
                return
            values = {
                spec.parameter_id: _draw(spec, self._rng) for spec in job.study_spec.parameters
            }
            trial = v1.Trial(
                id=trial_id,
                state=TrialState.ACTIVE,
                parameters=[v1.Trial.Parameter(parameter_id=k, value=v) for k, v in values.items()],
                start_time=now(),
            )
            job.trials.append(trial)
            index = len(job.trials) - 1
            spec = v1.HyperparameterTuningJob(job)
        measurement, reason = self._execute(spec, trial_id, values)
        with self.context.lock:
            stored = job.trials[index]
            stored.end_time = now()
            if measurement is None:
                stored.state, stored.infeasible_reason = TrialState.INFEASIBLE, reason
            else:
                stored.state = TrialState.SUCCEEDED
                stored.final_measurement = v1.Measurement(
                    metrics=[
                        v1.Measurement.Metric(
                            metric_id=spec.study_spec.metrics[0].metric_id, value=measurement
                        )
                    ]
                )
            job.update_time = now()

    def _execute(
        self, job: v1.HyperparameterTuningJob, trial_id: str, values: dict[str, float | str]
    ) -> tuple[float | None, str]:
        """Run the trial's container; its measurement, or None and why there is none."""
        container = job.trial_job_spec.worker_pool_specs[0].container_spec
        if image_name(container.image_uri) != image_name(self.pipeline_image):
            return None, f"the Vertex AI emulator cannot run the image {container.image_uri!r}"
        command = [
            sys.executable if part in ("python", "python3") else part for part in container.command
        ]
        arguments = [f"--{key}={_argument(value)}" for key, value in values.items()]
        output = job.trial_job_spec.base_output_directory.output_uri_prefix.rstrip("/")
        with tempfile.TemporaryDirectory(prefix=f"vertex-emulator-trial-{trial_id}-") as scratch:
            metric_file = os.path.join(scratch, "output.metrics")
            environment = {
                **{k: v for k, v in os.environ.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"},
                **{variable.name: variable.value for variable in container.env},
                "CLOUD_ML_TRIAL_ID": trial_id,
                "CLOUD_ML_HP_METRIC_FILE": metric_file,
                "AIP_MODEL_DIR": f"{output}/{trial_id}/model/",
                "AIP_CHECKPOINT_DIR": f"{output}/{trial_id}/checkpoints/",
                "AIP_TENSORBOARD_LOG_DIR": f"{output}/{trial_id}/logs/",
            }
            if self.context.storage is not None:
                environment["STORAGE_EMULATOR_HOST"] = self.context.storage.url
            log_path = os.path.join(scratch, "trial.log")
            with open(log_path, "wb") as log:
                process = subprocess.Popen(
                    [*command, *container.args, *arguments],
                    cwd=PROJECT_ROOT,
                    env=environment,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                self._processes.add(process)
                code = process.wait()
                self._processes.discard(process)
            if code != 0:
                with open(log_path, errors="replace") as file:
                    tail = file.read().strip().splitlines()[-1:] or [""]
                return None, f"the trial exited with code {code}: {tail[0][:300]}"
            return _measurement(metric_file, job.study_spec)


def _measurement(path: str, study: v1.StudySpec) -> tuple[float | None, str]:
    """The trial's value of the study's metric from cloudml-hypertune's file (JSON lines)."""
    metric = study.metrics[0]
    try:
        with open(path) as file:
            records = [json.loads(line) for line in file if line.strip()]
    except FileNotFoundError:
        records = []
    values = [float(record[metric.metric_id]) for record in records if metric.metric_id in record]
    if not values:
        return None, f"the trial reported no {metric.metric_id}"
    if study.measurement_selection_type == v1.StudySpec.MeasurementSelectionType.LAST_MEASUREMENT:
        return values[-1], ""
    maximize = metric.goal == v1.StudySpec.MetricSpec.GoalType.MAXIMIZE
    return (max(values) if maximize else min(values)), ""
