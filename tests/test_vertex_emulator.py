"""The Vertex AI emulator behaves like the service where our code depends on it: uploads checked
against Cloud Storage, versions and aliases, names with the project number, paginated lists,
long-running operations polled, deploys that load the model, traffic rules, predictions."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform
from google.cloud import aiplatform_v1 as v1

from components.lib.targets import Serving, endpoint_registry, model_registry
from components.lib.targets.base import DEFAULT_SERVING, ModelVersion
from components.lib.targets.vertex import VertexError
from tests.conftest import VERTEX_LOCATION, VERTEX_PROJECT, upload_folder
from tests.serving_models import INSTANCES
from tests.vertex_emulator import VertexEmulator

pytestmark = pytest.mark.vertex_emulator

IMAGE = "europe-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"
ENDPOINT = "beer-endpoint"


def upload(uri: str, run: str = "run-a", image: str = IMAGE) -> ModelVersion:
    registry = model_registry("vertex", "", VERTEX_PROJECT, VERTEX_LOCATION, image)
    return registry.upload_version("Beer Classifier", uri, {"accuracy": 0.9}, {"run": run}, [run])


def deploy(version: ModelVersion, serving: Serving = DEFAULT_SERVING) -> dict:
    endpoints = endpoint_registry("vertex", "", VERTEX_PROJECT, VERTEX_LOCATION, serving)
    return endpoints.deploy(ENDPOINT, version)


def gapic(client_class: type, emulator: VertexEmulator):
    return client_class(
        client_options={"api_endpoint": f"localhost:{emulator.port}"},
        credentials=AnonymousCredentials(),
    )


def test_upload_is_checked_against_cloud_storage_and_named_with_the_project_number(
    vertex_emulator: VertexEmulator, stored: Callable[[str], str], emulated_gcs
) -> None:
    with pytest.raises(VertexError, match=r"gs://beer-models/nowhere is empty or does not exist"):
        upload("gs://beer-models/nowhere")
    code = Path(__file__).parent / "vertex_emulator"
    no_saved_model = upload_folder(emulated_gcs, code, "code", "beer-models")
    with pytest.raises(VertexError, match=r"exactly one of: \[saved_model.pb, saved_model.pbtxt\]"):
        upload(no_saved_model)

    version = upload(stored("v1"))

    number = vertex_emulator.project_number(VERTEX_PROJECT)
    assert number.isdigit() and len(number) == 12
    assert version.model.startswith(f"projects/{number}/locations/{VERTEX_LOCATION}/models/")
    assert version.version_id == "1"
    assert vertex_emulator.calls("GetOperation"), "the SDK polls the upload until it is done"
    assert vertex_emulator.operations.pending() == []


def test_aliases_move_between_versions_and_are_checked(
    vertex_emulator: VertexEmulator, stored: Callable[[str], str]
) -> None:
    uri = stored("v1")

    def upload_version(alias: str, parent: str | None = None, **extra) -> aiplatform.Model:
        return aiplatform.Model.upload(
            display_name="Beer Classifier",
            artifact_uri=uri,
            serving_container_image_uri=IMAGE,
            parent_model=parent,
            version_aliases=[alias],
            **extra,
        )

    first = upload_version("run-a")
    upload_version("run-b", first.resource_name, is_default_version=False)
    third = upload_version("run-a", first.resource_name)

    def aliases(version: str) -> list[str]:
        return sorted(aiplatform.Model(first.resource_name, version=version).version_aliases)

    assert (aliases("1"), aliases("2"), aliases("3")) == ([], ["run-b"], ["default", "run-a"])
    assert aiplatform.Model(first.resource_name).version_id == third.version_id == "3"
    assert aiplatform.Model(first.resource_name, version="run-b").version_id == "2"

    for bad in ({"version_aliases": ["1234"]}, {"labels": {"Run": "a"}}):
        with pytest.raises(exceptions.InvalidArgument):
            aiplatform.Model.upload(
                display_name="Beer Classifier",
                artifact_uri=uri,
                serving_container_image_uri=IMAGE,
                **bad,
            )


def test_list_calls_are_paginated(vertex_emulator: VertexEmulator, stored: Callable[[str], str]):
    vertex_emulator.context.default_page_size = 1
    uri = stored("v1")
    for name in ("first", "second", "third"):
        aiplatform.Model.upload(
            display_name=name, artifact_uri=uri, serving_container_image_uri=IMAGE
        )
    lists_before = len(vertex_emulator.calls("ListModels"))

    assert sorted(m.display_name for m in aiplatform.Model.list()) == ["first", "second", "third"]
    pages = vertex_emulator.calls("ListModels")[lists_before:]
    assert [bool(p.page_token) for p in pages] == [False, True, True]

    client = gapic(aiplatform.gapic.ModelServiceClient, vertex_emulator)
    parent = f"projects/{VERTEX_PROJECT}/locations/{VERTEX_LOCATION}"
    first_page = client.list_models(v1.ListModelsRequest(parent=parent, page_size=2))
    assert len(first_page._response.models) == 2 and first_page._response.next_page_token


def test_deployed_model_answers_over_grpc_and_rest_in_vertex_format(
    vertex_emulator: VertexEmulator, stored: Callable[[str], str]
) -> None:
    version = upload(stored("v1"))
    endpoint = deploy(version)
    deployed_id = endpoint["deployedModels"][0]["id"]
    assert endpoint["trafficSplit"] == {deployed_id: 100}

    answer = aiplatform.Endpoint(endpoint["name"]).predict(instances=INSTANCES)
    assert [p["CLASSES"] for p in answer.predictions] == [0, 1, 2]
    assert all(len(p["PROBABILITIES"]) == 3 for p in answer.predictions)
    assert (answer.deployed_model_id, answer.model_version_id) == (deployed_id, "1")
    assert answer.model_resource_name == version.model

    url = f"http://127.0.0.1:{vertex_emulator.rest_port}/v1/{endpoint['name']}"
    body = requests.post(f"{url}:predict", json={"instances": INSTANCES}, timeout=30).json()
    assert [p["CLASSES"] for p in body["predictions"]] == [0, 1, 2]
    assert body["deployedModelId"] == deployed_id
    assert (body["model"], body["modelVersionId"]) == (version.model, "1")
    raw = requests.post(f"{url}:rawPredict", json={"instances": INSTANCES[:1]}, timeout=30)
    assert raw.json()["predictions"][0]["CLASSES"] == 0
    assert raw.headers["X-Vertex-AI-Deployed-Model-Id"] == deployed_id
    bad = requests.post(f"{url}:predict", json={"instances": [{"bytes": "x"}]}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_predictions_follow_the_traffic_split(
    vertex_emulator: VertexEmulator, stored: Callable[[str], str]
) -> None:
    deploy(upload(stored("v1"), "run-a"))
    endpoint = deploy(upload(stored("v2"), "run-b"), Serving(traffic_percentage=50))
    assert sorted(endpoint["trafficSplit"].values()) == [50, 50]

    red = INSTANCES[:1]
    answers = [aiplatform.Endpoint(endpoint["name"]).predict(instances=red) for _ in range(30)]
    by_version = Counter((a.model_version_id, a.predictions[0]["CLASSES"]) for a in answers)
    assert set(by_version) == {("1", 0), ("2", 2)}, "version 2 answers in reverse"
    assert min(by_version.values()) >= 5


def test_traffic_must_sum_to_100_and_a_model_with_traffic_stays_deployed(
    vertex_emulator: VertexEmulator, stored: Callable[[str], str]
) -> None:
    deploy(upload(stored("v1"), "run-a"))
    endpoint = deploy(upload(stored("v2"), "run-b"), Serving(traffic_percentage=50))
    client = gapic(aiplatform.gapic.EndpointServiceClient, vertex_emulator)
    first, second = (d["id"] for d in endpoint["deployedModels"])

    with pytest.raises(exceptions.InvalidArgument, match="must add up to 100"):
        client.update_endpoint(
            endpoint=v1.Endpoint(name=endpoint["name"], traffic_split={first: 60, second: 30}),
            update_mask={"paths": ["traffic_split"]},
        )
    with pytest.raises(exceptions.FailedPrecondition, match="has traffic assigned"):
        client.undeploy_model(endpoint=endpoint["name"], deployed_model_id=first).result()
    assert len(vertex_emulator.endpoints[endpoint["name"]].deployed_models) == 2

    client.update_endpoint(
        endpoint=v1.Endpoint(name=endpoint["name"], traffic_split={first: 0, second: 100}),
        update_mask={"paths": ["traffic_split"]},
    )
    client.undeploy_model(endpoint=endpoint["name"], deployed_model_id=first).result()
    stored_endpoint = vertex_emulator.endpoints[endpoint["name"]]
    assert [d.id for d in stored_endpoint.deployed_models] == [second]
    assert dict(stored_endpoint.traffic_split) == {second: 100}


def test_unknown_images_and_unservable_models_fail_the_deploy(
    vertex_emulator: VertexEmulator, stored: Callable[[str], str]
) -> None:
    other_image = vertex_emulator.images.push("europe-docker.pkg.dev/p/r/someone-elses:1")
    other = upload(stored("v1"), image=other_image)
    with pytest.raises(VertexError, match="cannot run the image"):
        deploy(other)
    broken = upload(stored("broken"), "run-b")
    with pytest.raises(VertexError, match=r"FailedPreconditionError: Could not find variable"):
        deploy(broken)
    [endpoint] = vertex_emulator.endpoints.values()
    assert list(endpoint.deployed_models) == [] and dict(endpoint.traffic_split) == {}


def test_operations_can_be_waited_for_and_cancelled(vertex_emulator: VertexEmulator) -> None:
    from google.api_core import operations_v1
    from google.longrunning import operations_pb2
    from google.protobuf import duration_pb2

    vertex_emulator.hold("CreateEndpoint")
    client = gapic(aiplatform.gapic.EndpointServiceClient, vertex_emulator)
    parent = f"projects/{VERTEX_PROJECT}/locations/{VERTEX_LOCATION}"
    held = client.create_endpoint(parent=parent, endpoint=v1.Endpoint(display_name="a"))
    finishing = client.create_endpoint(parent=parent, endpoint=v1.Endpoint(display_name="b"))
    channel = client.transport.grpc_channel
    wait = channel.unary_unary(
        "/google.longrunning.Operations/WaitOperation",
        request_serializer=operations_pb2.WaitOperationRequest.SerializeToString,
        response_deserializer=operations_pb2.Operation.FromString,
    )

    done = wait(operations_pb2.WaitOperationRequest(name=finishing.operation.name))
    assert done.done and finishing.result(timeout=1).display_name == "b"
    still = wait(
        operations_pb2.WaitOperationRequest(
            name=held.operation.name, timeout=duration_pb2.Duration(nanos=300_000_000)
        )
    )
    assert not still.done
    operations = operations_v1.OperationsClient(channel)
    operations.cancel_operation(held.operation.name)
    assert operations.get_operation(held.operation.name).error.code == 1  # CANCELLED
    assert [e.display_name for e in aiplatform.Endpoint.list()] == ["b"]


@pytest.mark.usefixtures("no_ambient_vertex_settings")
def test_submit_with_an_experiment_records_the_run_in_it(vertex_emulator: VertexEmulator):
    from pipeline.run import main
    from tests.conftest import VERTEX_SETTINGS

    assert main([*VERTEX_SETTINGS, "--experiment", "beer-trials"]) == 0

    metadata = vertex_emulator.metadata
    store = f"projects/{vertex_emulator.project_number(VERTEX_PROJECT)}/locations/"
    store += f"{VERTEX_LOCATION}/metadataStores/default"
    experiment = metadata.contexts[f"{store}/contexts/beer-trials"]
    assert experiment.schema_title == "system.Experiment"
    [job] = vertex_emulator.pipelines.jobs.values()
    assert metadata.children[experiment.name] == [job.job_detail.pipeline_run_context.name]
    assert vertex_emulator.unimplemented == []


def test_started_by_hand_it_prints_settings_that_reach_it(tmp_path: Path) -> None:
    """``python -m tests.vertex_emulator``, then a separate process with the printed settings."""
    import os
    import re
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT

    emulator = subprocess.Popen(
        [sys.executable, "-m", "tests.vertex_emulator", "--bucket", "image-classifier"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        while not lines or "Ctrl-C" not in lines[-1]:
            line = emulator.stdout.readline()
            assert line, f"the emulator stopped: {''.join(lines)}"
            lines.append(line)
        exports = dict(re.findall(r"^  export (\w+)=(\S+)$", "".join(lines), re.MULTILINE))
        assert os.path.isdir(Path(exports["IMAGE_CLASSIFIER_GCS_MOUNT_ROOT"]) / "image-classifier")
        client = (
            "from google.cloud import aiplatform\n"
            "from components.lib.targets.vertex import call_vertex\n"
            "endpoint = call_vertex('create', lambda: aiplatform.Endpoint.create("
            f"display_name='by-hand', project='{VERTEX_PROJECT}', location='{VERTEX_LOCATION}'))\n"
            "print(endpoint.resource_name)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", client],
            cwd=ROOT,
            env={**os.environ, **exports, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        number = re.search(r"test-project = (\d{12})", "".join(lines)).group(1)
        assert result.stdout.splitlines()[-1].startswith(f"projects/{number}/locations/")
    finally:
        emulator.send_signal(signal.SIGINT)
        assert emulator.wait(timeout=60) == 0
