"""Pipeline templates in Artifact Registry: ``pipeline.run publish`` through kfp's real
``RegistryClient``, and ``--template`` on submit and schedule through aiplatform's real
template download, against a stand-in of the registry on loopback."""

from __future__ import annotations

import hashlib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import google.auth
import pytest
import yaml
from google.oauth2.credentials import Credentials

from components.images import ImageSet
from pipeline.pipeline import PIPELINE_NAME
from pipeline.run import main
from pipeline.templates import (
    CONTEXT_ENV,
    TemplateError,
    TemplateRef,
    parse_template,
)
from tests.artifact_registry import ArtifactRegistryStandIn
from tests.conftest import VERTEX_IMAGE, VERTEX_LOCATION, VERTEX_PROJECT, VERTEX_SETTINGS
from tests.vertex_emulator import VertexEmulator

REPOSITORY = f"https://{VERTEX_LOCATION}-kfp.pkg.dev/{VERTEX_PROJECT}/pipelines"
PACKAGE_URI = f"{REPOSITORY}/{PIPELINE_NAME}"
pytestmark = pytest.mark.usefixtures("no_ambient_vertex_settings", "compiled_once")
# A template carries its images: --image is for a fresh compile only.
SETTINGS = VERTEX_SETTINGS[: VERTEX_SETTINGS.index("--image")]


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pipeline compiled with a pushed image, as a user publishes it (the checked-in
    pipeline.yaml runs the placeholder image, which publish refuses)."""
    from pipeline.compile import compile_pipeline

    return Path(
        compile_pipeline(
            str(tmp_path_factory.mktemp("spec") / "pipeline.yaml"),
            images=ImageSet.beside(VERTEX_IMAGE),
        )
    )


@pytest.fixture
def registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, service_account_key: Path
) -> Iterator[ArtifactRegistryStandIn]:
    """The stand-in, reached by kfp's client (context file) and by aiplatform (urllib), with
    application default credentials that carry a known token (and a key file, which the CLI
    checks before its first request)."""
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(service_account_key))
    stand_in = ArtifactRegistryStandIn()
    monkeypatch.setenv(CONTEXT_ENV, str(stand_in.context_file(tmp_path)))
    monkeypatch.setattr(
        google.auth, "default", lambda *_, **__: (Credentials(token="ar-token"), VERTEX_PROJECT)
    )
    monkeypatch.setattr(urllib.request, "_opener", stand_in.opener())
    yield stand_in
    stand_in.stop()


def digest_of(path: Path) -> str:
    return f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"


def uploads(registry: ArtifactRegistryStandIn) -> list:
    return [r for r in registry.requests if r.method == "POST" and "/tags" not in r.path]


def test_template_uris() -> None:
    assert parse_template(PACKAGE_URI) == TemplateRef(REPOSITORY, PIPELINE_NAME, "latest")
    assert parse_template(f"{PACKAGE_URI}@0.1.0").reference == "0.1.0"
    assert parse_template(f"{PACKAGE_URI}/0.1.0").reference == "0.1.0"  # Vertex's form
    pinned = parse_template(f"{PACKAGE_URI}@sha256:abc")
    assert pinned.pinned and pinned.uri == f"{PACKAGE_URI}/sha256:abc"
    for bad in ("gs://bucket/pipeline.yaml", f"{REPOSITORY}@v1", f"{PACKAGE_URI}@bad tag!"):
        with pytest.raises(TemplateError, match=r"expected https://REGION-kfp|neither a tag"):
            parse_template(bad)


def test_publish_uploads_once_tags_version_and_latest(
    spec: Path, registry: ArtifactRegistryStandIn, capsys: pytest.CaptureFixture
) -> None:
    assert main(["publish", "--repository", REPOSITORY, "--pipeline-file", str(spec)]) == 0
    digest = digest_of(spec)
    out = capsys.readouterr().out
    assert f"published      {PACKAGE_URI}/{digest}" in out
    assert f"--template {PACKAGE_URI}@0.1.0" in out
    repository = registry.repository(VERTEX_LOCATION, VERTEX_PROJECT, "pipelines")
    assert repository.files[PIPELINE_NAME] == {digest: spec.read_bytes()}
    assert repository.tags[PIPELINE_NAME] == {"0.1.0": digest, "latest": digest}
    [upload] = uploads(registry)
    assert upload.path == f"/kfp/{VERTEX_LOCATION}/{VERTEX_PROJECT}/pipelines"
    assert upload.headers["authorization"] == "Bearer ar-token"
    assert b'name="tags"\r\n\r\n0.1.0\r\n' in upload.body
    created = [r for r in registry.requests if r.method == "POST" and "tagId=latest" in r.path]
    assert len(created) == 1 and digest.encode() in created[0].body

    assert main(["publish", "--repository", REPOSITORY, "--pipeline-file", str(spec)]) == 0
    assert "unchanged" in capsys.readouterr().out
    assert len(uploads(registry)) == 1  # the same file is not uploaded twice


def test_a_released_version_is_never_overwritten(
    spec: Path, registry: ArtifactRegistryStandIn, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["publish", "--repository", REPOSITORY, "--pipeline-file", str(spec)]) == 0
    changed = tmp_path / "pipeline.yaml"
    changed.write_text(spec.read_text().replace("Lite0", "Lite-0", 1))
    assert changed.read_text() != spec.read_text()
    publish = ["publish", "--repository", REPOSITORY, "--pipeline-file", str(changed)]

    assert main(publish) == 1
    err = capsys.readouterr().err
    assert f"@0.1.0 is already published as {digest_of(spec)}" in err
    assert "bump the version" in err
    tags = registry.repository(VERTEX_LOCATION, VERTEX_PROJECT, "pipelines").tags[PIPELINE_NAME]
    assert tags == {"0.1.0": digest_of(spec), "latest": digest_of(spec)}

    assert main([*publish, "--tag", "0.2.0"]) == 0
    assert tags == {
        "0.1.0": digest_of(spec),
        "0.2.0": digest_of(changed),
        "latest": digest_of(changed),
    }
    assert any(
        r.method == "PATCH" and "/tags/latest?updateMask=version" in r.path
        for r in registry.requests
    )


def test_submit_runs_the_published_template_pinned_to_its_digest(
    spec: Path,
    registry: ArtifactRegistryStandIn,
    vertex_emulator: VertexEmulator,
    capsys: pytest.CaptureFixture,
) -> None:
    assert main(["publish", "--repository", REPOSITORY, "--pipeline-file", str(spec)]) == 0
    digest = digest_of(spec)

    assert main([*SETTINGS, "--template", PACKAGE_URI, "--param", "epochs=3"]) == 0
    assert f"template       {PACKAGE_URI}/{digest}" in capsys.readouterr().err
    [request] = vertex_emulator.calls("CreatePipelineJob")
    job = request.pipeline_job
    assert job.template_uri == f"{PACKAGE_URI}/{digest}"  # latest, pinned
    published = yaml.safe_load(spec.read_text())
    assert (
        job.pipeline_spec["root"]["dag"]["tasks"].keys() == published["root"]["dag"]["tasks"].keys()
    )
    assert job.runtime_config.parameter_values["epochs"] == 3
    downloads = [
        r.path for r in registry.requests if r.method == "GET" and r.path.startswith("/kfp/")
    ]
    # kfp's client read the parameters, then aiplatform fetched the template it submits
    assert (
        downloads
        == [f"/kfp/{VERTEX_LOCATION}/{VERTEX_PROJECT}/pipelines/{PIPELINE_NAME}/{digest}"] * 2
    )

    assert main([*SETTINGS, "--template", f"{PACKAGE_URI}@nope"]) == 1
    assert "has no tag 'nope': publish it first" in capsys.readouterr().err
    assert main([*SETTINGS, "--template", "gs://b/p.yaml"]) == 2
    assert main([*SETTINGS, "--template", PACKAGE_URI, "--pipeline-file", str(spec)]) == 2


def test_schedule_runs_a_pinned_template(
    spec: Path, registry: ArtifactRegistryStandIn, vertex_emulator: VertexEmulator
) -> None:
    assert main(["publish", "--repository", REPOSITORY, "--pipeline-file", str(spec)]) == 0
    schedule = ["schedule", "--cron", "0 3 * * 1", "--template", f"{PACKAGE_URI}@0.1.0"]
    assert main([*SETTINGS, *schedule]) == 0
    [request] = vertex_emulator.calls("CreateSchedule")
    job = request.schedule.create_pipeline_job_request.pipeline_job
    assert job.template_uri == f"{PACKAGE_URI}/{digest_of(spec)}"
    assert request.schedule.cron == "0 3 * * 1"


def test_publishing_the_placeholder_image_is_refused(
    registry: ArtifactRegistryStandIn, capsys: pytest.CaptureFixture
) -> None:
    checked_in = Path(__file__).resolve().parents[1] / "pipeline.yaml"

    assert main(["publish", "--repository", REPOSITORY, "--pipeline-file", str(checked_in)]) == 2
    assert main(["publish", "--repository", REPOSITORY]) == 2

    assert "placeholder" in capsys.readouterr().err
    assert registry.requests == []
