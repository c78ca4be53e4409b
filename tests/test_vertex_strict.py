"""What Vertex AI refuses, the emulator refuses, and the pipeline's code no longer sends it:
actAs on service accounts, GPUs on the wrong machine family, serving settings checked first,
schedule updates that would unset fields, answers lost on the way back, batch and online
request sizes, the metric file of a tuning trial. docs/vertex-iam.md is held to the spec."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import requests
import yaml
from google.api_core import exceptions
from google.cloud import aiplatform
from google.cloud import aiplatform_v1 as v1
from PIL import Image

from components.lib.serving.protocol import ONLINE_REQUEST_LIMIT_BYTES, shrunk
from components.lib.targets import Serving
from components.lib.targets.machines import machine_for, machine_problem
from components.lib.targets.vertex_batch import batch_size
from components.target import resolve_target
from pipeline.compile import compile_pipeline
from pipeline.compile import main as compile_main
from pipeline.pipeline import TrainResources
from pipeline.run import main
from tests.conftest import ROOT, VERTEX_LOCATION, VERTEX_PROJECT, VERTEX_SETTINGS
from tests.test_vertex_emulator import ENDPOINT, deploy, gapic, upload
from tests.vertex_emulator import VertexEmulator

ACCOUNT = "trainer@test-project.iam.gserviceaccount.com"
PARENT = f"projects/{VERTEX_PROJECT}/locations/{VERTEX_LOCATION}"
IMAGE = "europe-west4-docker.pkg.dev/test-project/beer/image-classifier:1"
DOCS = ROOT / "docs" / "vertex-iam.md"


def _pool(machine: str, gpu: str = "", count: int = 0) -> v1.WorkerPoolSpec:
    spec = v1.MachineSpec(machine_type=machine)
    if gpu:
        spec.accelerator_type, spec.accelerator_count = v1.AcceleratorType[gpu], count
    return v1.WorkerPoolSpec(
        machine_spec=spec, replica_count=1, container_spec=v1.ContainerSpec(image_uri=IMAGE)
    )


def _custom_job(pool: v1.WorkerPoolSpec, account: str = "") -> v1.CustomJob:
    spec = v1.CustomJobSpec(worker_pool_specs=[pool], service_account=account)
    return v1.CustomJob(display_name="train", job_spec=spec)


def _tuning_job(pool: v1.WorkerPoolSpec, account: str = "") -> v1.HyperparameterTuningJob:
    metric = v1.StudySpec.MetricSpec(metric_id="acc", goal="MAXIMIZE")
    rate = v1.StudySpec.ParameterSpec(
        parameter_id="lr", double_value_spec={"min_value": 0.1, "max_value": 0.2}
    )
    return v1.HyperparameterTuningJob(
        display_name="tune",
        study_spec=v1.StudySpec(metrics=[metric], parameters=[rate]),
        max_trial_count=1,
        parallel_trial_count=1,
        trial_job_spec=v1.CustomJobSpec(worker_pool_specs=[pool], service_account=account),
    )


# actAs (docs/vertex-iam.md)
@pytest.mark.vertex_emulator
def test_jobs_and_deploys_need_act_as_on_their_service_account(
    vertex_emulator: VertexEmulator, stored: Callable[[str], str]
) -> None:
    jobs = gapic(aiplatform.gapic.JobServiceClient, vertex_emulator)
    pool = _pool("n1-standard-8", "NVIDIA_TESLA_T4", 1)
    with pytest.raises(exceptions.PermissionDenied, match=r"iam\.serviceAccounts\.actAs"):
        jobs.create_custom_job(parent=PARENT, custom_job=_custom_job(pool, ACCOUNT))
    with pytest.raises(exceptions.PermissionDenied, match=r"iam\.serviceAccounts\.actAs"):
        jobs.create_hyperparameter_tuning_job(
            parent=PARENT, hyperparameter_tuning_job=_tuning_job(pool, ACCOUNT)
        )
    from components.lib.targets.vertex import VertexError

    version = upload(stored("v1"))
    with pytest.raises(VertexError, match=r"iam\.serviceAccounts\.actAs"):
        deploy(version, Serving(service_account=ACCOUNT))
    # The pipeline's account, acting as itself, once it may.
    vertex_emulator.iam.caller = f"serviceAccount:{ACCOUNT}"
    vertex_emulator.iam.grant_act_as(ACCOUNT)
    job = jobs.create_custom_job(parent=PARENT, custom_job=_custom_job(pool, ACCOUNT))
    assert job.job_spec.service_account == ACCOUNT


@pytest.mark.vertex_emulator
@pytest.mark.usefixtures("no_ambient_vertex_settings", "compiled_once")
def test_submit_names_the_missing_act_as_binding_before_submitting(
    vertex_emulator: VertexEmulator, capsys: pytest.CaptureFixture
) -> None:
    serving = "serving@test-project.iam.gserviceaccount.com"
    vertex_emulator.iam.grant_act_as(ACCOUNT)
    argv = [*VERTEX_SETTINGS, "--service-account", ACCOUNT]
    assert main([*argv, "--param", f"serving_service_account={serving}"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert f"you may not act as {serving} (the deployed model runs as it)" in line
    assert f"add-iam-policy-binding {serving}" in line
    assert "--role=roles/iam.serviceAccountUser" in line and ACCOUNT not in line
    assert vertex_emulator.calls("CreatePipelineJob") == []


def _documented() -> list[dict[str, str]]:
    """The rows of the roles table of docs/vertex-iam.md."""
    rows = [line for line in DOCS.read_text().splitlines() if line.startswith("| ")][2:]
    keys = ("feature", "principal", "role", "on")
    return [
        dict(zip(keys, (c.strip() for c in r.strip("|").split("|")), strict=True)) for r in rows
    ]


def _needs(rows: list[dict[str, str]], feature: str, role: str, on: str) -> None:
    assert any(feature in r["feature"] and role in r["role"] and on in r["on"] for r in rows), (
        f"docs/vertex-iam.md: {feature} needs {role} on {on}"
    )


def test_the_iam_page_grants_what_each_feature_of_the_compiled_spec_needs(
    spec: dict, tmp_path: Path
) -> None:
    rows = _documented()
    executors = spec["deploymentSpec"]["executors"]
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    _needs(rows, "every run", "roles/iam.serviceAccountUser", "the pipeline service account")
    if "exec-hyperparameter-tuning-job" in executors:
        _needs(rows, "hyperparameter tuning", "roles/iam.serviceAccountUser", "itself")
    if "serving_service_account" in parameters:
        _needs(rows, "serving_service_account", "roles/iam.serviceAccountUser", "serving")
    if "beam_pipeline_args" in parameters:
        _needs(rows, "Dataflow", "roles/dataflow.worker", "the project")
        _needs(rows, "Dataflow", "roles/dataflow.admin", "the project")
    job_spec = yaml.safe_load(
        Path(
            compile_pipeline(str(tmp_path / "job.yaml"), TrainResources(replica_count=2))
        ).read_text()
    )
    train = job_spec["deploymentSpec"]["executors"]["exec-train-model"]["container"]
    assert "custom_job" in " ".join(train["command"] + train["args"])
    _needs(rows, "custom training job", "roles/iam.serviceAccountUser", "itself")


# GPU and machine families
def test_a_gpu_gets_its_familys_machine_or_a_one_line_refusal(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    image = "us-docker.pkg.dev/acme-ml/pipes/image-classifier:1.2"
    output = tmp_path / "p.yaml"
    compile_main(
        ["--image", image, "--accelerator-type", "NVIDIA_L4", "--spot", "--output", str(output)]
    )
    text = output.read_text()
    assert "machine_type: g2-standard-8" in text and "n1-standard-8" not in text
    assert machine_for("NVIDIA_TESLA_A100", 2) == "a2-highgpu-2g"
    with pytest.raises(SystemExit):
        compile_main(["--accelerator-type", "NVIDIA_L4", "--machine-type", "n1-standard-8"])
    error = capsys.readouterr().err.splitlines()[-1]
    assert "NVIDIA_L4 cannot attach to n1-standard-8" in error and "g2-standard-8" in error
    with pytest.raises(SystemExit):
        compile_main(["--help"])
    assert re.search(r"NVIDIA_H100_80GB\s+A3\s+a3-highgpu-1g", capsys.readouterr().out)


@pytest.mark.vertex_emulator
def test_the_emulator_refuses_a_gpu_on_another_family(vertex_emulator: VertexEmulator) -> None:
    jobs = gapic(aiplatform.gapic.JobServiceClient, vertex_emulator)
    wrong = _pool("n1-standard-8", "NVIDIA_L4", 1)
    with pytest.raises(exceptions.InvalidArgument, match="needs G2 machines"):
        jobs.create_custom_job(parent=PARENT, custom_job=_custom_job(wrong))
    with pytest.raises(exceptions.InvalidArgument, match="needs G2 machines"):
        jobs.create_hyperparameter_tuning_job(
            parent=PARENT, hyperparameter_tuning_job=_tuning_job(wrong)
        )
    assert machine_problem("g2-standard-8", "NVIDIA_L4", 1) is None


# Serving settings, checked before anything runs
@pytest.mark.vertex_emulator
@pytest.mark.usefixtures("no_ambient_vertex_settings", "compiled_once")
def test_pipeline_run_refuses_serving_settings_before_submitting(
    vertex_emulator: VertexEmulator, capsys: pytest.CaptureFixture
) -> None:
    for wrong in (
        ["serving_accelerator_type=NVIDIA_TESLA_T4", "serving_accelerator_count=0"],
        ["min_replicas=3", "max_replicas=2"],
        ["traffic_percentage=150"],
        ["serving_accelerator_type=NVIDIA_L4", "serving_accelerator_count=1"],
    ):
        argv = [*VERTEX_SETTINGS, *(p for w in wrong for p in ("--param", w))]
        assert main(argv) == 2, wrong
        [line] = capsys.readouterr().err.splitlines()
        # The range of one parameter (the parameter table), or the settings together.
        assert line.startswith(("error: serving settings: ", "error: --param ")), line
    assert vertex_emulator.calls("CreatePipelineJob") == []


def test_the_first_step_refuses_serving_settings_the_deploy_would() -> None:
    target = {
        "target": "vertex",
        "project": "p",
        "location": "europe-west4",
        "local_state_dir": "",
        "job_project": "p",
        "job_location": "europe-west4",
        "machine_type": "n1-standard-2",
        "min_replicas": 1,
        "max_replicas": 1,
        "serving_accelerator_type": "",
        "serving_accelerator_count": 0,
        "traffic_percentage": 100,
        "serving_service_account": "",
        "data_uri": "gs://acme-mugs/data",
        "model_display_name": "",
        "endpoint_display_name": "",
    }
    assert tuple(resolve_target.python_func(**target)) == (
        "p",
        "europe-west4",
        "acme-mugs-classifier",
        "acme-mugs-classifier-endpoint",
    )
    with pytest.raises(ValueError, match=r"traffic_percentage must be 1\.\.100"):
        resolve_target.python_func(**{**target, "traffic_percentage": 150})
    with pytest.raises(ValueError, match="cannot attach to n1-standard-2"):
        resolve_target.python_func(
            **{**target, "serving_accelerator_type": "NVIDIA_L4", "serving_accelerator_count": 1}
        )


# Schedules
@pytest.mark.vertex_emulator
@pytest.mark.usefixtures("no_ambient_vertex_settings", "compiled_once")
def test_a_schedule_update_keeps_what_it_does_not_change(
    vertex_emulator: VertexEmulator, capsys: pytest.CaptureFixture
) -> None:
    vertex_emulator.iam.grant_act_as(ACCOUNT)
    network = "projects/1234/global/networks/ml"
    create = ["schedule", "--cron", "0 3 * * 1", *VERTEX_SETTINGS]
    assert main([*create, "--service-account", ACCOUNT, "--network", network]) == 0
    assert main(["schedule", "--cron", "0 4 * * *", *VERTEX_SETTINGS]) == 0, capsys.readouterr()
    [stored] = vertex_emulator.schedules.values()
    job = stored.create_pipeline_job_request.pipeline_job
    assert (stored.cron, job.service_account, job.network) == ("0 4 * * *", ACCOUNT, network)
    assert job.display_name, "the SDK's own job request, not a rebuilt one"

    schedules = gapic(aiplatform.gapic.ScheduleServiceClient, vertex_emulator)
    unset = v1.Schedule(stored)
    unset.create_pipeline_job_request.pipeline_job.service_account = ""
    with pytest.raises(exceptions.InvalidArgument, match=r"cannot unset.*service_account"):
        schedules.update_schedule(
            schedule=unset, update_mask={"paths": ["create_pipeline_job_request"]}
        )


# Answers lost on the way back
@pytest.mark.vertex_emulator
def test_a_first_upload_and_a_deploy_whose_answers_are_lost_happen_once(
    vertex_emulator: VertexEmulator, stored: Callable[[str], str]
) -> None:
    vertex_emulator.operations.delay_s = 0.5  # still running when the retry looks for it
    vertex_emulator.fail_after("UploadModel", grpc.StatusCode.UNAVAILABLE)
    version = upload(stored("v1"))
    [model] = vertex_emulator.registry.models.values()
    assert [v.version_id for v in model.versions] == ["1"], "one model, not two of one name"
    assert version.model == model.name

    vertex_emulator.fail_after("DeployModel", grpc.StatusCode.UNAVAILABLE)
    deploy(version)
    [endpoint] = vertex_emulator.endpoints.values()
    assert len(endpoint.deployed_models) == 1 and endpoint.display_name == ENDPOINT


@pytest.mark.vertex_emulator
def test_operations_are_listed_by_their_resource_not_by_a_prefix(
    vertex_emulator: VertexEmulator, stored: Callable[[str], str]
) -> None:
    from google.api_core import operations_v1

    version = upload(stored("v1"))
    client = gapic(aiplatform.gapic.ModelServiceClient, vertex_emulator)
    operations = operations_v1.OperationsClient(client.transport.grpc_channel)
    assert [op.name for op in operations.list_operations(version.model, "")]
    location = f"projects/{vertex_emulator.project_number(VERTEX_PROJECT)}/locations/"
    assert list(operations.list_operations(location + VERTEX_LOCATION, "")) == []


@pytest.mark.vertex_emulator
@pytest.mark.usefixtures("no_ambient_vertex_settings", "compiled_once")
def test_a_submit_whose_answer_is_lost_makes_one_job(
    vertex_emulator: VertexEmulator, capsys: pytest.CaptureFixture
) -> None:
    vertex_emulator.fail_after("CreatePipelineJob", grpc.StatusCode.UNAVAILABLE)
    assert main(VERTEX_SETTINGS) == 0, capsys.readouterr().err
    assert len(vertex_emulator.calls("CreatePipelineJob")) == 1
    assert len(vertex_emulator.pipelines.jobs) == 1


# Images, request sizes, batches
@pytest.mark.vertex_emulator
def test_an_image_that_no_registry_holds_is_refused(
    vertex_emulator: VertexEmulator, stored: Callable[[str], str]
) -> None:
    from components.lib.targets.vertex import VertexError

    unpushed = "europe-docker.pkg.dev/p/r/never-pushed:1"
    with pytest.raises(VertexError, match="does not exist"):
        upload(stored("v1"), image=unpushed)
    assert vertex_emulator.registry.models == {}
    vertex_emulator.images.push(unpushed)
    assert vertex_emulator.images.holds(unpushed)
    assert not vertex_emulator.images.holds("europe-docker.pkg.dev/p/r/never-pushed:2")


@pytest.mark.vertex_emulator
def test_online_predictions_over_one_and_a_half_megabytes_are_refused(
    vertex_emulator: VertexEmulator,
) -> None:
    url = f"http://127.0.0.1:{vertex_emulator.rest_port}/v1/{PARENT}/endpoints/1:predict"
    body = b'{"instances": [{"b64": "' + b"A" * ONLINE_REQUEST_LIMIT_BYTES + b'"}]}'
    answer = requests.post(url, data=body, timeout=30)
    assert answer.status_code == 400
    assert "exceeds the limit: 1572864 bytes" in answer.json()["error"]["message"]


def _photo(width: int, height: int, orientation: int = 1) -> bytes:
    noise = Image.effect_noise((width, height), 64).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    noise.save(out, "JPEG", quality=95, exif=exif)
    return out.getvalue()


def test_large_photos_are_sent_upright_and_small_and_batches_fit_the_body_limit() -> None:
    photo = _photo(4000, 3000, orientation=6)  # stored sideways: upright it is 3000 x 4000
    assert len(photo) > ONLINE_REQUEST_LIMIT_BYTES
    sent = shrunk(photo)
    assert len(sent) * 4 / 3 < ONLINE_REQUEST_LIMIT_BYTES / 2
    with Image.open(io.BytesIO(sent)) as image:
        assert image.size == (768, 1024)
    small = _photo(64, 64)
    assert shrunk(small) == small
    assert batch_size(1_000) == 64
    assert batch_size(4 * 1024 * 1024) == 2, "64 phone photos would pass the 10 MiB body limit"


@pytest.mark.vertex_emulator
def test_a_refused_batch_fails_every_instance_in_it(vertex_emulator: VertexEmulator) -> None:
    class Refusing:
        def predict(self, instances: list, parameters: object) -> list:
            from tests.vertex_emulator.serving import PredictError

            if any("bad" in str(i) for i in instances):
                raise PredictError("413 body too large", invalid=True)
            return [{"ok": True} for _ in instances]

    batch = vertex_emulator.batch_jobs
    job = v1.BatchPredictionJob(name="j", manual_batch_tuning_parameters={"batch_size": 2})
    batch.jobs["j"] = job
    batch._instances = lambda _: ["good-1", "bad", "good-2", "good-3"]
    results, errors = batch._score(Refusing(), job)
    assert [e["instance"] for e in errors] == ["good-1", "bad"]
    assert [r["instance"] for r in results] == ["good-2", "good-3"]


# The console's description of beam_pipeline_args
def test_the_beam_description_names_a_worker_image_that_can_start(spec: dict) -> None:
    described = spec["root"]["inputDefinitions"]["parameters"]["beam_pipeline_args"]
    text = " ".join(described["description"].split())
    assert "--sdk_container_image=<pipeline image>" not in text
    assert "/opt/apache/beam/boot" in text


# Tuning trials run as uid 1000
def test_a_trial_that_cannot_write_its_metric_file_stops_before_training(
    tmp_path: Path,
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "components.lib.tuning.trial",
            "--raw-data",
            str(tmp_path / "no-data"),
            "--settings",
            "{}",
            "--learning_rate=0.01",
            "--fine_tune_learning_rate=0.001",
            "--fine_tune_from_block=8",
            "--backbone=efficientnet-lite0",
        ],
        cwd=ROOT,
        env={"CLOUD_ML_HP_METRIC_FILE": str(blocked / "hypertune/output.metrics"), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert f"cannot write its metric file {blocked}/hypertune/output.metrics" in line
