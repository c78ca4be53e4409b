"""Hyperparameter tuning: one study, serialised for the Vertex AI tuning job and searched locally.

Fast: the study itself, what the compiled pipeline sends (study spec, trial machines, branches)
and the data every trial sees. Slow: a local run whose train step gets the best trial's
parameters, and the tuning job created by google-cloud-pipeline-components' own launcher on the
Vertex AI emulator, whose trials run the project's trial entry point and report through
cloudml-hypertune, read back by the best-trial step.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.cloud.aiplatform import hyperparameter_tuning as hpt
from google_cloud_pipeline_components.v1.hyperparameter_tuning_job import (
    serialize_metrics,
    serialize_parameters,
)
from kfp import dsl

from components.images import PLACEHOLDERS, ImageSet
from components.lib.modelling.variants import OFFLINE_BACKBONES
from components.lib.tuning.study import (
    LOCAL,
    OFF,
    STUDY,
    VERTEX,
    Trial,
    trials_table,
    tuning_mode,
)
from components.lib.tuning.vertex import TRIAL_MODULE, job_name, worker_pool_specs
from components.tune import search_hyperparameters, tuning_job_spec
from pipeline.compile import compile_pipeline
from pipeline.pipeline import PIPELINE_NAME, TrainResources
from tests.conftest import make_layout, run_cli, upload_folder

TUNED = [parameter.name for parameter in STUDY.parameters]
TINY_TRAINING = {"epochs": 2, "fine_tune_epochs": 1, "batch_size": 8, "seed": 3}


def _constants(inputs: dict) -> dict:
    """The constant arguments of a compiled task's inputs."""
    return {
        name: value["runtimeValue"]["constant"]
        for name, value in inputs.items()
        if "runtimeValue" in value
    }


def _group(spec: dict, task: str) -> str:
    """The condition group (If/Elif/Else) whose branches hold ``task``."""
    branch, _ = _branch(spec, task)
    [group] = [
        name
        for name, component in spec["components"].items()
        if "branches" in name
        and any(t["componentRef"]["name"] == branch for t in component["dag"]["tasks"].values())
    ]
    return group


def _branch(spec: dict, task: str) -> tuple[str, dict]:
    """The condition branch (component name and its tasks) that holds ``task``."""
    for name, component in spec["components"].items():
        tasks = component.get("dag", {}).get("tasks", {})
        if task in tasks and name.startswith("comp-condition-") and "branches" not in name:
            return name, tasks
    raise AssertionError(f"no condition branch holds {task}")


# The study
def test_the_study_tunes_the_train_steps_parameters_over_every_backbone() -> None:
    assert TUNED == ["learning_rate", "fine_tune_learning_rate", "fine_tune_from_block", "backbone"]
    by_name = {parameter.name: parameter for parameter in STUDY.parameters}
    assert by_name["backbone"].values == tuple(OFFLINE_BACKBONES)
    assert (by_name["fine_tune_from_block"].low, by_name["fine_tune_from_block"].high) == (4, 16)
    assert (STUDY.metric, STUDY.goal, STUDY.algorithm) == (
        "val_accuracy",
        "maximize",
        "RANDOM_SEARCH",
    )


def test_samples_are_seeded_and_inside_the_ranges() -> None:
    assert STUDY.sample(random.Random(7)) == STUDY.sample(random.Random(7))
    assert STUDY.sample(random.Random(7)) != STUDY.sample(random.Random(8))
    rng = random.Random(1)
    draws = [STUDY.sample(rng) for _ in range(200)]
    rates = [d["learning_rate"] for d in draws]
    assert min(rates) >= 1e-3 and max(rates) <= 1e-1
    # Log scale: about as many draws below the geometric middle (1e-2) as above it.
    assert 70 < sum(rate < 1e-2 for rate in rates) < 130
    assert {d["fine_tune_from_block"] for d in draws} == set(range(4, 17))
    assert {d["backbone"] for d in draws} == set(OFFLINE_BACKBONES)
    assert all(1e-5 <= d["fine_tune_learning_rate"] <= 1e-3 for d in draws)


def test_parameters_from_vertex_are_typed_and_checked() -> None:
    given = {
        "learning_rate": "0.0123",
        "fine_tune_learning_rate": 2e-4,
        "fine_tune_from_block": 8.0,  # a protobuf number
        "backbone": "efficientnet-lite1",
    }
    assert STUDY.parse(given) == {
        "learning_rate": 0.0123,
        "fine_tune_learning_rate": 2e-4,
        "fine_tune_from_block": 8,
        "backbone": "efficientnet-lite1",
    }
    with pytest.raises(ValueError, match="backbone must be one of efficientnet-lite0"):
        STUDY.parse({**given, "backbone": "resnet50"})
    with pytest.raises(ValueError, match="needs the parameters fine_tune_from_block"):
        STUDY.parse({k: v for k, v in given.items() if k != "fine_tune_from_block"})


def _trial(trial: str, metric: float | None, block: int = 4) -> Trial:
    parameters = {
        "learning_rate": 0.01,
        "fine_tune_learning_rate": 1e-4,
        "fine_tune_from_block": block,
        "backbone": "efficientnet-lite0",
    }
    return Trial(
        trial, parameters, metric, 10.0, "SUCCEEDED" if metric is not None else "INFEASIBLE"
    )


def test_the_best_trial_has_the_highest_accuracy_and_is_the_earliest_of_equals() -> None:
    trials = [_trial("1", 0.9), _trial("2", 0.95, 8), _trial("10", 0.95, 12), _trial("3", None)]
    assert STUDY.best(trials).trial == "2"
    assert STUDY.best(list(reversed(trials))).trial == "2", "by trial id, not list order"
    table = trials_table(trials, STUDY)
    assert "| 2 (best) | 0.01 | 0.0001 | 8 | efficientnet-lite0 | 0.9500 | 10 |" in table
    assert "| 3 | 0.01 | 0.0001 | 4 | efficientnet-lite0 | INFEASIBLE | 10 |" in table
    with pytest.raises(ValueError, match=r"no trial reported val_accuracy \(trial 3: INFEASIBLE"):
        STUDY.best([_trial("3", None)])


def test_where_a_run_tunes() -> None:
    assert tuning_mode(0, "gs://bucket/root") == OFF
    assert tuning_mode(3, "gs://bucket/root") == VERTEX
    assert tuning_mode(3, "/home/me/.vertex-local/pipeline_root") == LOCAL
    with pytest.raises(ValueError, match="tuning_trials must be 0"):
        tuning_mode(-1, "gs://bucket/root")
    assert [STUDY.parallel(n) for n in (1, 2, 8)] == [1, 2, 2]


def test_trial_settings_need_a_validation_split_and_known_parameters() -> None:
    from components.lib.tuning.settings import TrialSettings

    with pytest.raises(ValueError, match="validation_fraction must be above 0"):
        TrialSettings(training={}, validation_fraction=0.0)
    with pytest.raises(ValueError, match="unknown training parameters: epoch"):
        TrialSettings(training={"epoch": 3})
    config = TrialSettings(training={"epochs": 2, "seed": 5}).config(
        {"backbone": "efficientnet-lite2"}
    )
    assert (config.epochs, config.seed, config.backbone) == (2, 5, "efficientnet-lite2")


UNTUNED = {
    "epochs": 2,
    "fine_tune_epochs": 1,
    "batch_size": 8,
    "dropout": 0.3,
    "label_smoothing": 0.0,
    "brightness_contrast": 0.1,
    "early_stopping_patience": 2,
    "imbalance_ratio": 2.0,
    "seed": 7,
}


def test_trial_settings_are_read_from_a_steps_arguments_by_name() -> None:
    from components.lib.tuning.settings import TrialSettings

    arguments = {**UNTUNED, "image_size": 32, "validation_fraction": 0.25, "tuning_trials": 3}
    settings = TrialSettings.from_step_arguments({**arguments, "tempfile": object()})
    assert settings == TrialSettings(UNTUNED, image_size=32, validation_fraction=0.25)
    del arguments["imbalance_ratio"], arguments["image_size"]
    with pytest.raises(TypeError, match="must take the parameters imbalance_ratio, image_size"):
        TrialSettings.from_step_arguments(arguments)


@pytest.mark.parametrize("step", [search_hyperparameters, tuning_job_spec])
def test_both_tuning_steps_take_every_setting_their_trials_share(step: Any) -> None:
    """What ``from_step_arguments`` reads from a step's ``locals()`` must be in its signature."""
    declared = set(step.component_spec.inputs)
    assert {*UNTUNED, "image_size", "validation_fraction"} <= declared


# What the compiled pipeline sends
def test_the_tuning_job_gets_the_study_serialised_by_google_cloud_pipeline_components(
    spec: dict,
) -> None:
    _, tasks = _branch(spec, "hyperparameter-tuning-job")
    inputs = tasks["hyperparameter-tuning-job"]["inputs"]["parameters"]
    constant = _constants(inputs)
    expected_parameters = serialize_parameters(
        {
            "learning_rate": hpt.DoubleParameterSpec(min=1e-3, max=1e-1, scale="log"),
            "fine_tune_learning_rate": hpt.DoubleParameterSpec(min=1e-5, max=1e-3, scale="log"),
            "fine_tune_from_block": hpt.IntegerParameterSpec(min=4, max=16, scale="linear"),
            "backbone": hpt.CategoricalParameterSpec(values=list(OFFLINE_BACKBONES)),
        }
    )
    # The compiled YAML keeps numbers as floats (a protobuf Struct): 2 is 2.0 there.
    assert _numbers_equal(constant["study_spec_parameters"], expected_parameters)
    assert _numbers_equal(
        constant["study_spec_metrics"], serialize_metrics({"val_accuracy": "maximize"})
    )
    assert constant["study_spec_algorithm"] == "RANDOM_SEARCH"
    assert constant["display_name"] == f"{PIPELINE_NAME}-tuning"
    assert constant["location"] == "{{$.pipeline_google_cloud_location}}", "the job's own region"
    assert constant["service_account"] == "{{$.pipeline_service_account}}"
    assert inputs["max_trial_count"] == {
        "componentInputParameter": "pipelinechannel--tuning_trials"
    }
    assert inputs["parallel_trial_count"] == {
        "componentInputParameter": "pipelinechannel--plan-tuning-parallel_trials"
    }
    for name in ("worker_pool_specs", "base_output_directory"):
        assert inputs[name]["taskOutputParameter"] == {
            "outputParameterKey": name,
            "producerTask": "tuning-job-spec",
        }
    spec_inputs = tasks["tuning-job-spec"]["inputs"]["parameters"]
    machine = {
        k: spec_inputs[k]["runtimeValue"]["constant"]
        for k in ("image", "machine_type", "accelerator_type", "accelerator_count")
    }
    assert machine == {
        "image": PLACEHOLDERS.gpu,
        "machine_type": "n1-standard-8",
        "accelerator_type": "NVIDIA_TESLA_T4",
        "accelerator_count": 1.0,
    }, "trials run on the train job's machine"


def _numbers_equal(left: Any, right: Any) -> bool:
    """Equal, reading every number as a float and every whole-number string as that number."""

    def normal(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: normal(item) for key, item in value.items()}
        if isinstance(value, list):
            return [normal(item) for item in value]
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float):
            return float(value)
        return value

    return normal(left) == normal(right)


def test_tuning_off_trains_with_the_given_parameters_and_on_with_the_best_trials(
    spec: dict,
) -> None:
    root = spec["root"]["dag"]["tasks"]
    branches = {
        task: _branch(spec, task)[0]
        for task in ("given-hyperparameters", "best-trial", "search-hyperparameters")
    }
    assert len(set(branches.values())) == 3, "three exclusive branches"
    tuning = _group(spec, "best-trial")
    group = spec["components"][tuning]["dag"]["tasks"]
    condition = {
        task["componentRef"]["name"]: task["triggerPolicy"]["condition"] for task in group.values()
    }
    assert "== 'off'" in condition[branches["given-hyperparameters"]]
    assert "== 'vertex'" in condition[branches["best-trial"]]
    assert condition[branches["search-hyperparameters"]].startswith("!("), "the else branch"
    assert root["plan-tuning"]["inputs"]["parameters"]["pipeline_root"]["runtimeValue"][
        "constant"
    ] == ("{{$.pipeline_root}}")
    # preprocess, features and train take the tuned parameters from whichever branch ran.
    outputs = spec["components"][tuning]["outputDefinitions"]["parameters"]
    assert len(outputs) == len(TUNED)
    train = root["train-model"]["inputs"]["parameters"]
    for name in TUNED:
        producer = train[name]["taskOutputParameter"]
        assert f"comp-{producer['producerTask']}" == tuning
        selected = spec["components"][tuning]["dag"]["outputs"]["parameters"][
            producer["outputParameterKey"]
        ]["valueFromOneof"]["parameterSelectors"]
        assert {f"comp-{s['producerSubtask']}" for s in selected} == set(branches.values())
    for step in ("preprocess-data", "extract-features"):
        backbone = root[step]["inputs"]["parameters"]["backbone"]["taskOutputParameter"]
        assert f"comp-{backbone['producerTask']}" == tuning
    assert root["train-model"]["inputs"]["parameters"]["epochs"] == {
        "componentInputParameter": "epochs"
    }, "what tuning does not change comes from the pipeline's parameters"
    assert spec["root"]["inputDefinitions"]["parameters"]["tuning_trials"]["defaultValue"] == 0


def test_every_tuning_step_returns_the_studys_parameters(spec: dict) -> None:
    for component in ("given-hyperparameters", "search-hyperparameters", "best-trial"):
        outputs = spec["components"][f"comp-{component}"]["outputDefinitions"]["parameters"]
        assert set(outputs) == set(TUNED), component


def test_a_trial_runs_the_trial_module_in_the_pipeline_image_on_the_train_jobs_machine() -> None:
    settings = {"training": {"epochs": 3}, "image_size": 0, "validation_fraction": 0.1}
    [pool] = worker_pool_specs(
        "europe-docker.pkg.dev/p/r/image-classifier:1",
        "gs://b/validated",
        settings,
        "n1-standard-8",
        "NVIDIA_L4",
        1,
    )
    assert pool == {
        "machine_spec": {
            "machine_type": "n1-standard-8",
            "accelerator_type": "NVIDIA_L4",
            "accelerator_count": 1,
        },
        "replica_count": 1,
        "container_spec": {
            "image_uri": "europe-docker.pkg.dev/p/r/image-classifier:1",
            "command": ["python3", "-m", TRIAL_MODULE],
            "args": ["--raw-data", "gs://b/validated", "--settings", json.dumps(settings)],
        },
    }
    [cpu] = worker_pool_specs("image", "gs://b/v", settings, "n1-standard-8")
    assert cpu["machine_spec"] == {"machine_type": "n1-standard-8"}
    # The machine type comes from the compile-time resources of the train job.
    assert TrainResources(
        machine_type="a2-highgpu-1g", accelerator_type="NVIDIA_TESLA_A100"
    ).machine_type == ("a2-highgpu-1g")


def test_the_job_is_named_by_the_ops_gcp_resources() -> None:
    name = "projects/123/locations/europe-west4/hyperparameterTuningJobs/42"
    resources = {
        "resources": [
            {
                "resourceType": "HyperparameterTuningJob",
                "resourceUri": f"https://europe-west4-aiplatform.googleapis.com/v1/{name}",
            }
        ]
    }
    assert job_name(json.dumps(resources)) == name
    with pytest.raises(ValueError, match="names no one hyperparameter tuning job"):
        job_name(json.dumps({"resources": []}))


# Slow: real trials
def _executor_output(pipeline_root: Path, task: str) -> dict:
    [run] = [path for path in pipeline_root.iterdir() if (path / task).is_dir()]
    return json.loads((run / task / "executor_output.json").read_text())


@pytest.mark.slow
def test_a_local_run_trains_with_the_best_trial_of_its_search(tmp_path: Path) -> None:
    data = make_layout(tmp_path / "data", {"0red": 6, "1blue": 6})
    state = tmp_path / "state"
    result = run_cli(
        "--local",
        "--json",
        "--state-dir",
        str(state),
        "--data-uri",
        str(data),
        "--min-accuracy",
        "0",
        *("--param", "image_size=32", "--param", "validation_fraction=0.25"),
        *("--param", "epochs=2", "--param", "fine_tune_epochs=1", "--param", "batch_size=8"),
        *("--param", "tuning_trials=2"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tuning: 2 trials of val_accuracy, one after another" in result.stderr
    search = _executor_output(state / "pipeline_root", "search-hyperparameters")
    record = search["artifacts"]["trials"]["artifacts"][0]["metadata"]
    trials = record["trials"]
    assert [t["trial"] for t in trials] == ["1", "2"]
    assert trials[0]["parameters"] != trials[1]["parameters"], "two draws of the study"
    assert all(0.0 <= t["metric"] <= 1.0 and t["seconds"] > 0 for t in trials)
    best = max(trials, key=lambda t: (t["metric"], -int(t["trial"])))
    assert record["best"] == best["trial"]
    assert search["parameterValues"] == best["parameters"]

    train = _executor_output(state / "pipeline_root", "train-model")
    model = train["artifacts"]["model"]["artifacts"][0]["metadata"]
    config = model["training_config"]
    assert {name: config[name] for name in TUNED} == best["parameters"]
    assert (config["epochs"], config["fine_tune_epochs"], config["batch_size"]) == (2, 1, 8)
    assert model["backbone"] == best["parameters"]["backbone"]
    # The same seed, data and settings: the final training repeats the best trial.
    history = model["history"]
    last = history.get("fine_tune_val_accuracy", history["head_val_accuracy"])
    assert max(last) == pytest.approx(best["metric"], abs=0.5), "within one of four photos"
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["deployed"] is True
    assert summary["trained_with"] == best["parameters"]
    assert summary["tuning_trials"] == 2


def _vertex_rendering(value: Any) -> Any:
    """A parameter value as Vertex AI writes it into a placeholder: protobuf JSON, where a
    whole number stored as a double is written without a fraction (1.0 as 1)."""
    if isinstance(value, dict):
        return {key: _vertex_rendering(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_vertex_rendering(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@pytest.mark.slow
@pytest.mark.vertex_emulator
def test_a_vertex_tuning_job_runs_its_trials_and_the_best_one_is_read_back(
    vertex_emulator, emulated_gcs, spec: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform
    from google_cloud_pipeline_components.container.v1.gcp_launcher import job_remote_runner
    from google_cloud_pipeline_components.container.v1.hyperparameter_tuning_job import launcher
    from kfp.local import placeholder_utils

    from components.tune import best_trial, tuning_job_spec
    from tests.conftest import VERTEX_LOCATION, VERTEX_PROJECT

    # The validated images in Cloud Storage, where the trials' machines read them.
    raw = upload_folder(
        emulated_gcs,
        make_layout(tmp_path / "data", {"0red": 6, "1blue": 6}),
        f"{tmp_path.name}/raw",
    )
    _, tasks = _branch(spec, "hyperparameter-tuning-job")
    machine = _constants(tasks["tuning-job-spec"]["inputs"]["parameters"])
    job_spec = tuning_job_spec.python_func(
        raw_data=dsl.Dataset(uri=raw),
        image=machine["image"],
        machine_type=machine["machine_type"],
        accelerator_type=machine["accelerator_type"],
        accelerator_count=int(machine["accelerator_count"]),
        image_size=32,
        validation_fraction=0.25,
        early_stopping_patience=3,
        dropout=0.2,
        label_smoothing=0.1,
        brightness_contrast=0.2,
        imbalance_ratio=1.5,
        study=dsl.Artifact(uri=f"gs://beer-data/{tmp_path.name}/tuning"),
        **TINY_TRAINING,
    )

    # The tuning op's container, run as Vertex AI runs it: its arguments with the task's
    # inputs in place, then google-cloud-pipeline-components' launcher, against the emulator.
    executor = spec["deploymentSpec"]["executors"]["exec-hyperparameter-tuning-job"]["container"]
    inputs = tasks["hyperparameter-tuning-job"]["inputs"]["parameters"]
    values = _constants(inputs)
    values |= {
        "worker_pool_specs": job_spec.worker_pool_specs,
        "base_output_directory": job_spec.base_output_directory,
        "max_trial_count": 2,
        "parallel_trial_count": 2,
        "project": VERTEX_PROJECT,
        "location": VERTEX_LOCATION,
        "service_account": "pipelines@test-project.iam.gserviceaccount.com",
    }
    defaults = spec["components"]["comp-hyperparameter-tuning-job"]["inputDefinitions"][
        "parameters"
    ]
    values = {
        name: d["defaultValue"] for name, d in defaults.items() if "defaultValue" in d
    } | values
    gcp_resources = tmp_path / "gcp_resources"
    executor_input = {
        "inputs": {"parameterValues": _vertex_rendering(values)},
        "outputs": {
            "parameters": {"gcp_resources": {"outputFile": str(gcp_resources)}},
            "outputFile": str(tmp_path / "output_metadata.json"),
        },
    }
    arguments = placeholder_utils.replace_placeholders(
        executor["args"], executor_input, "job", "tuning-job", "gs://beer-data/root", "job-1"
    )

    real_client = aiplatform.gapic.JobServiceClient

    def emulated_client(client_options=None, client_info=None):
        return real_client(
            credentials=AnonymousCredentials(),
            client_options=ClientOptions(api_endpoint=f"localhost:{vertex_emulator.port}"),
            client_info=client_info,
        )

    monkeypatch.setattr(job_remote_runner.aiplatform.gapic, "JobServiceClient", emulated_client)
    # Inside the pipeline the tuning job is created by the pipeline's account, which runs the
    # trials as itself: it must be a Service Account User of itself (docs/vertex-iam.md).
    account = values["service_account"]
    vertex_emulator.iam.caller = f"serviceAccount:{account}"
    vertex_emulator.iam.grant_act_as(account)
    monkeypatch.setattr(job_remote_runner, "_POLLING_INTERVAL_IN_SECONDS", 0.5)
    launcher.main(arguments)

    [request] = vertex_emulator.calls("CreateHyperparameterTuningJob")
    sent = request.hyperparameter_tuning_job
    assert request.parent == f"projects/{VERTEX_PROJECT}/locations/{VERTEX_LOCATION}"
    assert [m.metric_id for m in sent.study_spec.metrics] == ["val_accuracy"]
    assert sent.study_spec.metrics[0].goal.name == "MAXIMIZE"
    assert sent.study_spec.algorithm.name == "RANDOM_SEARCH"
    assert [p.parameter_id for p in sent.study_spec.parameters] == TUNED
    [rate, _, block, backbone] = sent.study_spec.parameters
    assert (rate.double_value_spec.min_value, rate.double_value_spec.max_value) == (1e-3, 1e-1)
    assert rate.scale_type.name == "UNIT_LOG_SCALE"
    assert (block.integer_value_spec.min_value, block.integer_value_spec.max_value) == (4, 16)
    assert list(backbone.categorical_value_spec.values) == list(OFFLINE_BACKBONES)
    assert (sent.max_trial_count, sent.parallel_trial_count) == (2, 2)
    [pool] = sent.trial_job_spec.worker_pool_specs
    assert pool.container_spec.image_uri == PLACEHOLDERS.gpu
    assert pool.container_spec.args[:2] == ["--raw-data", raw]
    assert pool.machine_spec.accelerator_type.name == "NVIDIA_TESLA_T4"
    assert sent.trial_job_spec.service_account == "pipelines@test-project.iam.gserviceaccount.com"
    assert (
        sent.trial_job_spec.base_output_directory.output_uri_prefix
        == job_spec.base_output_directory
    )
    polls = vertex_emulator.calls("GetHyperparameterTuningJob")
    assert len(polls) > 1, "the job finished later, not at once"

    [job] = vertex_emulator.tuning.jobs.values()
    assert job.state.name == "JOB_STATE_SUCCEEDED", [t.infeasible_reason for t in job.trials]
    assert [t.state.name for t in job.trials] == ["SUCCEEDED", "SUCCEEDED"]
    measured = {t.id: t.final_measurement.metrics[0].value for t in job.trials}
    assert all(0.0 <= value <= 1.0 for value in measured.values())

    trials = dsl.Markdown(uri=str(tmp_path / "trials.md"))
    chosen = best_trial.python_func(gcp_resources=gcp_resources.read_text(), trials=trials)
    best_id = max(sorted(measured), key=lambda trial_id: measured[trial_id])
    [winner] = [t for t in job.trials if t.id == best_id]
    suggested = STUDY.parse({p.parameter_id: p.value for p in winner.parameters})
    assert dict(zip(TUNED, chosen, strict=True)) == suggested
    assert trials.metadata["best"] == best_id
    assert [t["metric"] for t in trials.metadata["trials"]] == [measured["1"], measured["2"]]
    assert "(best)" in Path(trials.path).read_text()


def test_trials_run_in_the_compiled_image_on_the_train_jobs_machine(tmp_path: Path) -> None:
    image = "europe-west1-docker.pkg.dev/my-project/image-classifier/image-classifier:test"
    resources = TrainResources(machine_type="g2-standard-8", accelerator_type="NVIDIA_L4")
    path = compile_pipeline(str(tmp_path / "pipeline.yaml"), resources, ImageSet.beside(image))
    _, tasks = _branch(yaml.safe_load(Path(path).read_text()), "tuning-job-spec")
    machine = _constants(tasks["tuning-job-spec"]["inputs"]["parameters"])
    assert (machine["image"], machine["machine_type"], machine["accelerator_type"]) == (
        image,
        "g2-standard-8",
        "NVIDIA_L4",
    )
