"""The local model registry and endpoints: Vertex's nouns, atomic records."""

from __future__ import annotations

import concurrent.futures
import json
import os
from pathlib import Path

import pytest

from components.lib.targets import endpoint_registry, model_registry
from components.lib.targets.base import resource_id
from components.lib.targets.local import EndpointRegistry, LocalEndpoints, ModelRegistry
from components.lib.targets.vertex import VertexEndpoints, VertexModelRegistry


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
        "Beer Classifier",
        str(retrained),
        {"accuracy": 0.95},
        {"run": "b"},
        aliases=["run-b"],
        description="beats the champion",
    )

    assert first.resource_name == "projects/proj/locations/europe-west1/models/beer-classifier@1"
    assert second.version_id == "2"
    record = registry.get_model("Beer Classifier")
    assert [v["versionAliases"] for v in record["versions"]] == [[], ["default", "run-b"]]
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
    assert record.pop("changed") is True
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
    with pytest.raises(ValueError, match="needs the pipeline parameters project and location"):
        endpoint_registry("vertex", "", "", "europe-west4")
    assert isinstance(model_registry("vertex", "", "p", "europe-west4"), VertexModelRegistry)
    assert isinstance(endpoint_registry("vertex", "", "p", "europe-west4"), VertexEndpoints)


def test_a_deploy_that_fails_midway_leaves_the_old_version_serving(
    tmp_path: Path, artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = str(tmp_path / "state")
    registry = ModelRegistry(state, "p", "l")
    endpoints = EndpointRegistry(state, "p", "l")
    endpoints.deploy("e", registry.upload_version("m", str(artifact), {}, {}))
    before = (tmp_path / "state/endpoints/e.json").read_text()
    second = registry.upload_version("m", str(make_artifact(tmp_path / "v2")), {}, {})

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("killed while writing the endpoint record")

    monkeypatch.setattr("components.lib.targets.local.os.replace", crash)
    with pytest.raises(KeyboardInterrupt):
        endpoints.deploy("e", second)

    assert (tmp_path / "state/endpoints/e.json").read_text() == before
    assert endpoints.get("e")["deployedModels"][0]["modelVersionId"] == "1"
    assert not list((tmp_path / "state/endpoints").glob("*.tmp"))


def _upload_many(state: str, source: str, count: int) -> list[str]:
    registry = ModelRegistry(state, "p", "l")
    versions = []
    for index in range(count):
        artifact = make_artifact(Path(source) / f"{os.getpid()}-{index}", str(index).encode())
        versions.append(registry.upload_version("m", str(artifact), {}, {}).version_id)
    return versions


def test_concurrent_runs_register_every_version_intact(tmp_path: Path) -> None:
    state, source = str(tmp_path / "state"), str(tmp_path / "artifacts")
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        results = list(pool.map(_upload_many, [state, state], [source, source], [10, 10]))

    record = ModelRegistry(state, "p", "l").get_model("m")
    ids = [v["versionId"] for v in record["versions"]]
    assert ids == [str(n) for n in range(1, 21)]
    assert sorted(results[0] + results[1], key=int) == ids
    for version in record["versions"]:
        source_bytes = Path(version["sourceUri"], "saved_model.pb").read_bytes()
        assert Path(state, version["artifactUri"], "saved_model.pb").read_bytes() == source_bytes
    assert [v["versionAliases"] for v in record["versions"]].count(["default"]) == 1


def test_canary_at_10_then_a_run_at_100_retires_the_canary(tmp_path: Path) -> None:
    from components.lib.targets import Serving

    state = str(tmp_path / "state")
    registry = ModelRegistry(state, "p", "l")
    versions = [
        registry.upload_version("m", str(make_artifact(tmp_path / name, name.encode())), {}, {})
        for name in ("a", "b", "c")
    ]

    def deploy(version, share: int = 100) -> dict:
        return EndpointRegistry(state, "p", "l", Serving(traffic_percentage=share)).deploy(
            "e", version
        )

    deploy(versions[0])
    canary = deploy(versions[1], 10)
    assert canary["trafficSplit"] == {"m-v1": 90, "m-v2": 10}
    second_canary = deploy(versions[2], 10)
    assert second_canary["trafficSplit"] == {"m-v1": 90, "m-v3": 10}
    assert [d["id"] for d in second_canary["deployedModels"]] == ["m-v1", "m-v3"]
    assert EndpointRegistry(state, "p", "l").served_version("e") == (versions[0].model, "1")

    promoted = deploy(versions[2])
    assert promoted["trafficSplit"] == {"m-v3": 100}
    assert [d["id"] for d in promoted["deployedModels"]] == ["m-v3"]
    record = (tmp_path / "state/endpoints/e.json").read_text()
    assert deploy(versions[2])["changed"] is False
    assert (tmp_path / "state/endpoints/e.json").read_text() == record, "nothing rewritten"


def test_the_first_deploy_takes_all_traffic_whatever_its_share(tmp_path: Path) -> None:
    from components.lib.targets import Serving

    state = str(tmp_path / "state")
    version = ModelRegistry(state, "p", "l").upload_version(
        "m", str(make_artifact(tmp_path / "a")), {}, {}
    )
    record = EndpointRegistry(state, "p", "l", Serving(traffic_percentage=10)).deploy("e", version)
    assert record["trafficSplit"] == {"m-v1": 100}


def test_local_and_vertex_implement_the_declared_interface() -> None:
    import inspect

    from components.lib.targets.base import EndpointTarget, ModelRegistryTarget

    for protocol, implementations in (
        (ModelRegistryTarget, (ModelRegistry, VertexModelRegistry)),
        (EndpointTarget, (EndpointRegistry, VertexEndpoints)),
    ):
        members = [
            name
            for name, value in vars(protocol).items()
            if callable(value) and not name.startswith("_")
        ]
        assert members, protocol
        for implementation in implementations:
            for name in members:
                declared = inspect.signature(getattr(protocol, name))
                implemented = inspect.signature(getattr(implementation, name))
                assert implemented.parameters.keys() == declared.parameters.keys(), (
                    f"{implementation.__name__}.{name}{implemented} != {declared}"
                )


def test_traffic_plan_rules() -> None:
    from components.lib.targets.base import Deployment, plan_traffic

    a, b, c = (Deployment(i, "m", v) for i, v in (("1", "1"), ("2", "2"), ("3", "3")))
    plan = plan_traffic([a, b, c], {"1": 70, "2": 20, "3": 10}, "m", "4", 25)
    assert (plan.existing, plan.split, plan.retire) == (None, {"0": 25, "1": 75}, (b, c))
    plan = plan_traffic([a, b], {"1": 90, "2": 10}, "m", "2", 10)
    assert plan.unchanged and plan.existing == b
    plan = plan_traffic([a, b], {"1": 90, "2": 10}, "m", "2", 30)
    assert (plan.split, plan.retire, plan.unchanged) == ({"2": 30, "1": 70}, (), False)
    plan = plan_traffic([a], {"1": 100}, "m", "1", 10)
    assert plan.unchanged and plan.split == {"1": 100}, "nothing else serves: keeps it all"


def test_the_state_folder_can_be_moved_whole(tmp_path: Path, artifact: Path) -> None:
    """No record holds the state folder's own path: moved (or copied) elsewhere, it serves the
    versions it holds from their new place."""
    state = tmp_path / "state"
    version = ModelRegistry(str(state), "p", "l").upload_version("beer", str(artifact), {}, {})
    EndpointRegistry(str(state), "p", "l").deploy("beer-endpoint", version)
    records = [path.read_text() for path in state.rglob("*.json")]
    assert records and not [text for text in records if str(state) in text]

    moved = tmp_path / "elsewhere" / "state"
    moved.parent.mkdir()
    state.rename(moved)

    routed = LocalEndpoints(str(moved)).route("p", "l", "beer-endpoint")
    assert routed.artifact_uri == str(moved / "models/beer/versions/1")
    assert (Path(routed.artifact_uri) / "saved_model.pb").read_bytes() == b"model bytes"


def test_records_with_absolute_paths_are_still_read_after_a_move(
    tmp_path: Path, artifact: Path
) -> None:
    """A record written with absolute paths (before they were relative) still serves: where
    the path is, or at its place under the moved folder."""
    state = tmp_path / "state"
    ModelRegistry(str(state), "p", "l").upload_version("beer", str(artifact), {}, {})
    record_path = state / "models/beer/model.json"
    record = json.loads(record_path.read_text())
    record["versions"][0]["artifactUri"] = str(state / "models/beer/versions/1")
    record_path.write_text(json.dumps(record))
    registry = ModelRegistry(str(state), "p", "l")
    assert registry.get_version(record["name"], "1").artifact_uri == str(
        state / "models/beer/versions/1"
    )

    state.rename(tmp_path / "moved")

    version = ModelRegistry(str(tmp_path / "moved"), "p", "l").get_version(record["name"], "1")
    assert version.artifact_uri == str(tmp_path / "moved/models/beer/versions/1")
