"""The local model registry and endpoints: Vertex's nouns, atomic records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.lib.registry import EndpointRegistry, ModelRegistry, resource_id
from components.lib.targets import endpoint_registry, model_registry


def make_artifact(path: Path, content: bytes = b"model bytes") -> Path:
    path.mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(content)
    return path


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    return make_artifact(tmp_path / "artifact")


def test_resource_id_from_display_name() -> None:
    assert resource_id("Beer Classifier (v2)") == "beer-classifier-v2"
    with pytest.raises(ValueError, match="no letters or digits"):
        resource_id("***")


def test_versions_are_numbered_and_default_alias_moves(tmp_path: Path, artifact: Path) -> None:
    registry = ModelRegistry(str(tmp_path / "state"), "proj", "europe-west1")
    first = registry.upload_version(
        "Beer Classifier", str(artifact), {"accuracy": 0.9}, {"run": "a"}
    )
    retrained = make_artifact(tmp_path / "retrained", b"new model bytes")
    second = registry.upload_version(
        "Beer Classifier", str(retrained), {"accuracy": 0.95}, {"run": "b"}, "beats the champion"
    )

    assert first.resource_name == "projects/proj/locations/europe-west1/models/beer-classifier@1"
    assert second.version_id == "2"
    record = registry.get_model("Beer Classifier")
    assert [v["versionAliases"] for v in record["versions"]] == [[], ["default"]]
    assert record["versions"][1]["metrics"] == {"accuracy": 0.95}
    assert record["versions"][1]["labels"] == {"run": "b"}
    assert [v["versionDescription"] for v in record["versions"]] == ["", "beats the champion"]
    copied = Path(second.artifact_uri) / "saved_model.pb"
    assert copied.read_bytes() == b"new model bytes" and not copied.is_relative_to(retrained)
    assert registry.get_version(first.model, "1").artifact_uri == first.artifact_uri
    with pytest.raises(KeyError, match="@7 is not in the local registry"):
        registry.get_version(first.model, "7")


def test_the_same_artifact_is_registered_once(tmp_path: Path, artifact: Path) -> None:
    registry = ModelRegistry(str(tmp_path / "state"), "proj", "europe-west1")
    first = registry.upload_version("m", str(artifact), {"accuracy": 0.9}, {})
    again = registry.upload_version("m", str(artifact), {"accuracy": 0.9}, {})
    assert again == first
    assert len(registry.get_model("m")["versions"]) == 1


def test_deploy_moves_all_traffic_and_retires_the_old_version(
    tmp_path: Path, artifact: Path
) -> None:
    state = str(tmp_path / "state")
    registry = ModelRegistry(state, "proj", "us-central1")
    endpoints = EndpointRegistry(state, "proj", "us-central1")
    first = registry.upload_version("m", str(artifact), {}, {})
    endpoints.deploy("My Endpoint", first)
    second = registry.upload_version("m", str(make_artifact(tmp_path / "v2")), {}, {})
    record = endpoints.deploy("My Endpoint", second)

    assert record["name"] == "projects/proj/locations/us-central1/endpoints/my-endpoint"
    assert [(d["model"], d["modelVersionId"]) for d in record["deployedModels"]] == [
        ("projects/proj/locations/us-central1/models/m", "2")
    ]
    assert record["trafficSplit"] == {record["deployedModels"][0]["id"]: 100}
    on_disk = json.loads((tmp_path / "state/endpoints/my-endpoint.json").read_text())
    assert on_disk == record
    assert not list((tmp_path / "state/endpoints").glob("*.tmp"))


def test_targets_check_their_settings(tmp_path: Path) -> None:
    assert isinstance(model_registry("local", str(tmp_path), "p", "l"), ModelRegistry)
    assert isinstance(endpoint_registry("local", str(tmp_path), "p", "l"), EndpointRegistry)
    with pytest.raises(ValueError, match="needs local_state_dir"):
        model_registry("local", "", "p", "l")
    with pytest.raises(ValueError, match="target must be one of"):
        model_registry("cloud", str(tmp_path), "p", "l")
    with pytest.raises(NotImplementedError, match="target='local'"):
        endpoint_registry("vertex", str(tmp_path), "p", "l")
