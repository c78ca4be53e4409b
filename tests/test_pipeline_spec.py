"""The compiled pipeline: checked-in YAML is fresh, the GPU request, parameters and the gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from components.lib.modelling.variants import BACKBONES, DEFAULT_BACKBONE
from pipeline.compile import compile_pipeline, main

ROOT = Path(__file__).resolve().parent.parent


def test_checked_in_pipeline_yaml_equals_a_fresh_compile(tmp_path: Path) -> None:
    fresh = tmp_path / "pipeline.yaml"
    compile_pipeline(str(fresh))
    assert (ROOT / "pipeline.yaml").read_text() == fresh.read_text(), (
        "pipeline.yaml is stale: `python -m pipeline.compile --placeholder-images`, then commit it"
    )


def test_train_and_features_steps_request_one_t4_gpu(spec: dict) -> None:
    executors = spec["deploymentSpec"]["executors"]
    resources = executors["exec-train-model"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "NVIDIA_TESLA_T4"
    assert resources["accelerator"]["resourceCount"] == "1"
    assert resources["resourceCpuLimit"] == "8"
    assert resources["resourceMemoryLimit"] == "30G"
    features = executors["exec-extract-features"]["container"]["resources"]["accelerator"]
    assert (features["resourceType"], features["resourceCount"]) == ("NVIDIA_TESLA_T4", "1")
    others = {
        name: executor["container"].get("resources")
        for name, executor in executors.items()
        if name not in ("exec-train-model", "exec-extract-features")
    }
    assert not any(others.values()), "only the features and train steps ask for a GPU"


def test_compile_cli_sets_other_resources(tmp_path: Path) -> None:
    output = tmp_path / "gpu.yaml"
    resources = ["--accelerator-type", "NVIDIA_L4", "--accelerator-count", "2"]
    main(["--output", str(output), "--placeholder-images", *resources])
    executors = yaml.safe_load(output.read_text())["deploymentSpec"]["executors"]
    accelerator = executors["exec-train-model"]["container"]["resources"]["accelerator"]
    assert (accelerator["resourceType"], accelerator["resourceCount"]) == ("NVIDIA_L4", "2")


def test_every_parameter_has_a_default_and_a_description(spec: dict) -> None:
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert {"data_uri", "image_size", "epochs", "learning_rate", "min_accuracy"} <= set(parameters)
    assert {"model_display_name", "endpoint_display_name"} <= set(parameters)
    for name, parameter in parameters.items():
        assert "defaultValue" in parameter, name
        assert len(parameter.get("description", "")) > 20, name
    assert parameters["min_accuracy"]["defaultValue"] == 0.8


def test_backbone_parameter_offers_every_variant_at_its_native_size(spec: dict) -> None:
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert parameters["backbone"]["defaultValue"] == DEFAULT_BACKBONE
    assert all(name in parameters["backbone"]["description"] for name in BACKBONES)
    assert parameters["image_size"]["defaultValue"] == 0  # 0: the backbone's native size
    # The backbone reaches them through the tuning branches (tests/test_tuning.py): as given
    # when tuning_trials is 0.
    given = _holding(spec, "given-hyperparameters")["given-hyperparameters"]
    assert given["inputs"]["parameters"]["backbone"] == {
        "componentInputParameter": "pipelinechannel--backbone"
    }
    tasks = spec["root"]["dag"]["tasks"]
    for task in ("preprocess-data", "extract-features", "train-model"):
        backbone = tasks[task]["inputs"]["parameters"]["backbone"]["taskOutputParameter"]
        assert backbone["producerTask"] in tasks, task
        assert "given-hyperparameters" in json.dumps(
            spec["components"][tasks[backbone["producerTask"]]["componentRef"]["name"]]
        )


def _holding(spec: dict, task: str) -> dict:
    """The tasks of the condition branch that holds ``task``."""
    [tasks] = [
        component["dag"]["tasks"]
        for name, component in spec["components"].items()
        if name.startswith("comp-condition-") and task in component.get("dag", {}).get("tasks", {})
    ]
    return tasks


def test_upload_and_deploy_run_only_behind_the_gate(spec: dict) -> None:
    """The gate is infra validation's decision (evaluate's, with the serving budgets)."""
    components = spec["components"]
    gated = {
        name: dag
        for name, dag in components.items()
        if name.startswith("comp-condition-") and "tasks" in dag.get("dag", {})
    }
    [gate] = [
        component["dag"]["tasks"]
        for component in components.values()
        if "infra-validate-deploy" in json.dumps(component.get("dag", {}).get("tasks", {}))
    ]
    passing = [
        dag
        for dag in gate.values()
        if dag["triggerPolicy"]["condition"].startswith("inputs.parameter_values")
    ]
    assert len(passing) == 1
    assert "infra-validate-deploy" in passing[0]["triggerPolicy"]["condition"]
    open_branch = gated[passing[0]["componentRef"]["name"]]["dag"]["tasks"]
    assert set(open_branch) == {"upload-model", "deploy-model"}
    root_tasks = spec["root"]["dag"]["tasks"]
    assert "upload-model" not in root_tasks and "deploy-model" not in root_tasks
    for task in ("upload-model", "deploy-model"):
        assert open_branch[task]["cachingOptions"] == {}, "registering must never be cached"
    uploaded = open_branch["upload-model"]["inputs"]
    # Inside the branch a task's input is the branch's, named after the task that made it.
    assert uploaded["artifacts"]["model_evaluation"] == {
        "componentInputArtifact": "pipelinechannel--infra-validate-model_evaluation"
    }, "the version keeps the evaluation that infra validation completed"
    assert uploaded["parameters"]["decision"] == {
        "componentInputParameter": "pipelinechannel--infra-validate-reason"
    }


def test_infra_validation_serves_the_trained_model_after_evaluate(spec: dict) -> None:
    task = spec["root"]["dag"]["tasks"]["infra-validate"]
    artifacts = {
        name: binding["taskOutputArtifact"]["producerTask"]
        for name, binding in task["inputs"]["artifacts"].items()
    }
    assert artifacts == {
        "model": "train-model",
        "raw_data": "validate-data",
        "evaluation": "evaluate-model",
        "evaluation_report": "evaluate-model",
    }
    assert task["cachingOptions"] == {}, "its latency is this run's: never cached"
    outputs = spec["root"]["dag"]["outputs"]
    assert outputs["parameters"]["decision"]["valueFromParameter"]["producerSubtask"] == (
        "infra-validate"
    )
    assert outputs["artifacts"]["report"]["artifactSelectors"][0]["producerSubtask"] == (
        "infra-validate"
    )


def test_each_step_runs_in_its_roles_image(spec: dict) -> None:
    """TensorFlow steps that may get a GPU in the GPU image, the other TensorFlow steps in the
    CPU image, the rest in the light one; infra validation in the serving image (where the
    endpoint's server runs), which is also serving_image's default."""
    from components.images import PLACEHOLDERS

    executors = dict(spec["deploymentSpec"]["executors"])
    infra = executors.pop("exec-infra-validate")["container"]["image"]
    assert infra == PLACEHOLDERS.serving, "infra validation runs where the endpoint's server runs"
    tuning_job = executors.pop("exec-hyperparameter-tuning-job")["container"]["image"]
    assert tuning_job.startswith("gcr.io/ml-pipeline/google-cloud-pipeline-components:"), (
        "the tuning job's task is Google's launcher; its trials run the project image"
    )
    images = {name.removeprefix("exec-"): e["container"]["image"] for name, e in executors.items()}
    gpu = {"extract-features", "train-model", "search-hyperparameters"}
    cpu = {"preprocess-data", "evaluate-model"}
    assert {name for name, image in images.items() if image == PLACEHOLDERS.gpu} == gpu
    assert {name for name, image in images.items() if image == PLACEHOLDERS.cpu} == cpu
    assert {name for name, image in images.items() if image == PLACEHOLDERS.light} == (
        set(images) - gpu - cpu
    )
    serving = spec["root"]["inputDefinitions"]["parameters"]["serving_image"]
    assert serving["defaultValue"] == PLACEHOLDERS.serving


def test_upload_and_deploy_output_google_vertex_artifacts(spec: dict) -> None:
    outputs = {
        name: component["outputDefinitions"]["artifacts"]
        for name, component in spec["components"].items()
        if name in ("comp-upload-model", "comp-deploy-model")
    }
    assert outputs["comp-upload-model"]["vertex_model"]["artifactType"]["schemaTitle"] == (
        "google.VertexModel"
    )
    assert outputs["comp-deploy-model"]["vertex_endpoint"]["artifactType"]["schemaTitle"] == (
        "google.VertexEndpoint"
    )


def test_a_console_run_with_the_defaults_targets_the_jobs_project_and_region(spec: dict) -> None:
    """Vertex AI resolves these placeholders to the job's own project and region."""
    from components.lib.targets.base import SERVING_PARAMETERS
    from components.target import resolve_target

    parameters = spec["root"]["inputDefinitions"]["parameters"]
    defaults = {
        name: parameters[name]["defaultValue"] for name in ("target", "project", "location")
    }
    serving = {name: parameters[name]["defaultValue"] for name in SERVING_PARAMETERS}
    names = {
        name: parameters[name]["defaultValue"]
        for name in ("data_uri", "model_display_name", "endpoint_display_name")
    }
    assert defaults == {"target": "vertex", "project": "", "location": ""}
    assert (names["model_display_name"], names["endpoint_display_name"]) == ("", "")
    tasks = spec["root"]["dag"]["tasks"]
    inputs = tasks["resolve-target"]["inputs"]["parameters"]
    assert inputs["job_project"] == {
        "runtimeValue": {"constant": "{{$.pipeline_google_cloud_project_id}}"}
    }
    assert inputs["job_location"] == {
        "runtimeValue": {"constant": "{{$.pipeline_google_cloud_location}}"}
    }
    gated = _holding(spec, "upload-model")
    for task in (tasks["evaluate-model"], gated["upload-model"], gated["deploy-model"]):
        named = "model_display_name" if task is gated["upload-model"] else "endpoint_display_name"
        for name in ("project", "location", named):
            source = task["inputs"]["parameters"][name]
            producer = source.get("taskOutputParameter", {}).get("producerTask")
            producer = producer or source["componentInputParameter"]
            assert producer in ("resolve-target", f"pipelinechannel--resolve-target-{name}")

    resolved = resolve_target.python_func(
        **defaults,
        **serving,
        **names,
        local_state_dir="",
        job_project="my-project",
        job_location="us-central1",
    )
    assert (resolved.project, resolved.location) == ("my-project", "us-central1")
    # The challenge's bucket names the model: its folder, "data", says nothing.
    assert (resolved.model_display_name, resolved.endpoint_display_name) == (
        "ml6-junior-ml-engineer-challenge-cv-beer-classifier",
        "ml6-junior-ml-engineer-challenge-cv-beer-classifier-endpoint",
    )
    explicit = resolve_target.python_func(
        target="vertex",
        project="other",
        location="europe-west4",
        local_state_dir="",
        job_project="my-project",
        job_location="us-central1",
        **serving,
        data_uri="gs://acme/photos/mugs",
        model_display_name="",
        endpoint_display_name="",
    )
    assert tuple(explicit) == (
        "other",
        "europe-west4",
        "mugs-classifier",
        "mugs-classifier-endpoint",
    )
    with pytest.raises(ValueError, match="needs the pipeline parameters project and location"):
        resolve_target.python_func(
            **defaults,
            **serving,
            **names,
            local_state_dir="",
            job_project="{{$.pipeline_google_cloud_project_id}}",
            job_location="{{$.pipeline_google_cloud_location}}",
        )


def test_caching_follows_the_data(spec: dict) -> None:
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["fingerprint-data"]["cachingOptions"] == {}, "never cached"
    assert tasks["download-data"]["inputs"]["parameters"]["data_fingerprint"] == {
        "taskOutputParameter": {"outputParameterKey": "Output", "producerTask": "fingerprint-data"}
    }
    assert tasks["download-data"]["cachingOptions"] == {"enableCache": True}
    assert tasks["evaluate-model"]["cachingOptions"] == {}
