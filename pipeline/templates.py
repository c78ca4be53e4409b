"""Pipeline templates in Artifact Registry: publish the compiled pipeline, pin what runs.

A Kubeflow Pipelines repository in Artifact Registry
(``https://REGION-kfp.pkg.dev/PROJECT/REPOSITORY``) holds the compiled pipeline as a package
(named after the pipeline) whose versions are ``sha256:`` digests of the file, with tags on them.
``publish_template`` uploads it tagged with the project's version and ``latest``; a released
version tag never moves to other content. ``pinned_template`` turns ``URI@tag`` into the digest
the tag points at now, so a job or schedule records exactly which reviewed file it runs.

All calls go through kfp's ``RegistryClient``. ``IMAGE_CLASSIFIER_KFP_REGISTRY_CONTEXT`` names a kfp
registry context file (JSON of the URLs the client calls) that replaces Artifact Registry's,
for a proxy or a stand-in.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any

import requests
import yaml
from kfp.registry import RegistryClient

LATEST = "latest"
DIGEST_PREFIX = "sha256:"
CONTEXT_ENV = "IMAGE_CLASSIFIER_KFP_REGISTRY_CONTEXT"
_REPOSITORY = re.compile(
    r"^https://(?P<region>[a-z0-9-]+)-kfp\.pkg\.dev/(?P<project>[^/@]+)/(?P<repository>[^/@]+)$"
)
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class TemplateError(Exception):
    """A template URI, a registry answer or a publication that cannot go ahead; says why."""


@dataclass(frozen=True)
class TemplateRef:
    """``https://REGION-kfp.pkg.dev/PROJECT/REPO/PACKAGE`` at a tag or a ``sha256:`` digest."""

    repository: str
    package: str
    reference: str = LATEST

    @property
    def uri(self) -> str:
        """The template path Vertex AI reads: ``REPOSITORY/PACKAGE/TAG-or-DIGEST``."""
        return f"{self.repository}/{self.package}/{self.reference}"

    @property
    def pinned(self) -> bool:
        return self.reference.startswith(DIGEST_PREFIX)


def repository_uri(region: str, project: str, repository: str) -> str:
    return f"https://{region}-kfp.pkg.dev/{project}/{repository}"


def parse_template(text: str) -> TemplateRef:
    """``REPO_URI/PACKAGE[@TAG|@sha256:...]`` (or Vertex's ``REPO_URI/PACKAGE/TAG``)."""
    base, _, reference = text.partition("@")
    head, _, last = base.rstrip("/").rpartition("/")
    if not reference and not _REPOSITORY.match(head):  # the .../PACKAGE/TAG form
        head, _, package = head.rpartition("/")
        reference = last
    else:
        package = last
    if not _REPOSITORY.match(head) or not package:
        raise TemplateError(
            f"--template {text!r}: expected https://REGION-kfp.pkg.dev/PROJECT/REPOSITORY/"
            "PACKAGE[@TAG|@sha256:DIGEST]"
        )
    reference = reference or LATEST
    if not (reference.startswith(DIGEST_PREFIX) or _TAG.match(reference)):
        raise TemplateError(f"--template {text!r}: {reference!r} is neither a tag nor sha256:...")
    return TemplateRef(head, package, reference)


def _client(repository: str, auth: Any = None) -> RegistryClient:
    if not _REPOSITORY.match(repository):
        raise TemplateError(
            f"repository {repository!r}: expected https://REGION-kfp.pkg.dev/PROJECT/REPOSITORY"
        )
    return RegistryClient(host=repository, auth=auth, config_file=os.environ.get(CONTEXT_ENV))


def _registry_call(what: str, call: Any) -> Any:
    try:
        return call()
    except requests.HTTPError as error:
        response = error.response
        status = response.status_code if response is not None else "?"
        hint = {
            401: "; log in: gcloud auth application-default login",
            403: "; the caller needs roles/artifactregistry.writer (reader to submit) on it",
            404: "; create the repository: gcloud artifacts repositories create REPOSITORY "
            "--repository-format=kfp --location=REGION",
        }.get(status, "")
        raise TemplateError(f"{what}: HTTP {status}{hint}") from None
    except requests.ConnectionError as error:
        raise TemplateError(f"{what}: cannot reach the registry ({error})") from None


def _tag_digest(client: RegistryClient, package: str, tag: str) -> str | None:
    """The digest that ``tag`` points at, None when there is no such tag (or package)."""
    try:
        answer = client.get_tag(package, tag)
    except requests.HTTPError as error:
        if error.response is not None and error.response.status_code == 404:
            return None
        raise
    return answer["version"].rsplit("/", 1)[-1]


def _set_tag(client: RegistryClient, package: str, digest: str, tag: str) -> None:
    current = _tag_digest(client, package, tag)
    if current is None:
        client.create_tag(package, digest, tag)
    elif current != digest:
        client.update_tag(package, digest, tag)


@dataclass(frozen=True)
class Published:
    package: str
    digest: str
    tags: tuple[str, ...]
    uploaded: bool  # False: that exact file was already there

    def template(self, repository: str) -> TemplateRef:
        return TemplateRef(repository, self.package, self.digest)


def publish_template(spec_path: str, repository: str, version: str, auth: Any = None) -> Published:
    """Upload the compiled pipeline at ``spec_path``, tagged ``version`` and ``latest``.

    The same file again uploads nothing and only makes sure of the tags. A ``version`` tag that
    already names other content is refused: a released version is what was reviewed.
    """
    if not _TAG.match(version):
        raise TemplateError(f"version {version!r} is not a valid tag")
    with open(spec_path, "rb") as file:
        content = file.read()
    package = yaml.safe_load(content)["pipelineInfo"]["name"]
    digest = f"{DIGEST_PREFIX}{hashlib.sha256(content).hexdigest()}"
    client = _client(repository, auth)
    where = f"{repository}/{package}"
    released = _registry_call(
        f"read tag {version} of {where}", lambda: _tag_digest(client, package, version)
    )
    if released is not None and released != digest:
        raise TemplateError(
            f"{where}@{version} is already published as {released}, and this pipeline differs: "
            "bump the version in pyproject.toml (and the image tag) before publishing"
        )
    uploaded = released is None
    if uploaded:
        package, digest = _registry_call(
            f"upload to {repository}", lambda: client.upload_pipeline(spec_path, tags=[version])
        )
    _registry_call(f"tag {where} {LATEST}", lambda: _set_tag(client, package, digest, LATEST))
    return Published(package, digest, (version, LATEST), uploaded)


def pinned_template(template: TemplateRef, auth: Any = None) -> TemplateRef:
    """``template`` at the digest its tag points to now (a digest stays as it is)."""
    if template.pinned:
        return template
    client = _client(template.repository, auth)
    digest = _registry_call(
        f"read tag {template.reference} of {template.repository}/{template.package}",
        lambda: _tag_digest(client, template.package, template.reference),
    )
    if digest is None:
        raise TemplateError(
            f"{template.repository}/{template.package} has no tag {template.reference!r}: "
            "publish it first (python -m pipeline.run publish)"
        )
    return TemplateRef(template.repository, template.package, digest)


def download_template(template: TemplateRef, auth: Any = None) -> dict[str, Any]:
    """The compiled pipeline that ``template`` names, parsed."""
    client = _client(template.repository, auth)
    version, tag = (template.reference, None) if template.pinned else (None, template.reference)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "pipeline.yaml")
        _registry_call(
            f"download {template.uri}",
            lambda: client.download_pipeline(template.package, version, tag, file_name=path),
        )
        with open(path) as file:
            return yaml.safe_load(file)
