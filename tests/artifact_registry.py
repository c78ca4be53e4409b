"""A stand-in for Artifact Registry's Kubeflow Pipelines repositories on loopback.

It answers the requests kfp's ``RegistryClient`` makes (``kfp/registry/context/kfp_pkg_dev.json``)
and the template download of aiplatform's ``PipelineJob``:

- ``POST {host}`` (multipart: ``content`` file, ``tags`` form field): upload; the package is the
  pipeline's ``pipelineInfo.name``, the version ``sha256:`` of the file; answers
  ``PACKAGE/sha256:...`` as text;
- ``GET {host}/PACKAGE/TAG-or-VERSION``: the file;
- the Artifact Registry API's tags: ``GET``/``PATCH .../packages/P/tags/T``, ``POST
  .../packages/P/tags?tagId=T``, with 404 and 409 as the real API answers them.

``{host}`` is ``https://REGION-kfp.pkg.dev/PROJECT/REPO``; the tests reach this server through
``context_file`` (kfp's own context with the hosts replaced) and ``redirect_kfp_pkg_dev``
(urllib, which aiplatform downloads templates with). Every request is kept in ``requests``.
"""

from __future__ import annotations

import email
import hashlib
import json
import re
import threading
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kfp.registry
import yaml

_API = re.compile(
    r"^/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/repositories/"
    r"(?P<repo>[^/]+)/packages/(?P<package>[^/]+)/tags(?:/(?P<tag>[^/]+))?$"
)
_KFP = re.compile(
    r"^/kfp/(?P<location>[^/]+)/(?P<project>[^/]+)/(?P<repo>[^/]+)"
    r"(?:/(?P<package>[^/]+)/(?P<reference>[^/]+))?$"
)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


@dataclass
class Repository:
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)  # package -> digest -> file
    tags: dict[str, dict[str, str]] = field(default_factory=dict)  # package -> tag -> digest


class ArtifactRegistryStandIn:
    def __init__(self) -> None:
        self.repositories: dict[tuple[str, str, str], Repository] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        # Polled every 50 ms for shutdown (the default, 0.5 s, is what stop() would wait).
        serve = {"poll_interval": 0.05}
        threading.Thread(target=self._server.serve_forever, kwargs=serve, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def repository(self, location: str, project: str, repo: str) -> Repository:
        return self.repositories.setdefault((location, project, repo), Repository())

    def context_file(self, folder: Path) -> Path:
        """kfp's Artifact Registry context with both hosts pointed at this server."""
        source = Path(kfp.registry.__file__).parent / "context" / "kfp_pkg_dev.json"
        context = json.loads(source.read_text())
        for key, url in context.items():
            url = url.replace("https://artifactregistry.googleapis.com", self.base)
            context[key] = url.replace(
                "{host}", f"{self.base}/kfp/{{location}}/{{project_id}}/{{repo_id}}"
            )
        path = folder / "kfp_registry_context.json"
        path.write_text(json.dumps(context))
        return path

    def opener(self) -> urllib.request.OpenerDirector:
        """A urllib opener that sends ``https://REGION-kfp.pkg.dev/...`` here."""
        base = self.base

        class Redirect(urllib.request.BaseHandler):
            def https_request(self, request: urllib.request.Request) -> urllib.request.Request:
                parts = urlsplit(request.full_url)
                match = re.fullmatch(r"([\w-]+)-kfp\.pkg\.dev", parts.netloc)
                if match:
                    request.full_url = f"{base}/kfp/{match[1]}{parts.path}"
                return request

        return urllib.request.build_opener(Redirect())

    # what the handler calls
    def upload(self, location: str, project: str, repo: str, tags: list[str], content: bytes):
        package = yaml.safe_load(content)["pipelineInfo"]["name"]
        digest = f"sha256:{hashlib.sha256(content).hexdigest()}"
        repository = self.repository(location, project, repo)
        repository.files.setdefault(package, {})[digest] = content
        for tag in tags:
            repository.tags.setdefault(package, {})[tag] = digest
        return package, digest


def _handler(registry: ArtifactRegistryStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: Any) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str) -> None:
            self._reply(status, {"error": {"code": status, "message": message}})

        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with registry._lock:
                registry.requests.append(
                    Request(
                        self.command,
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                    )
                )
            url = urlsplit(self.path)
            if match := _KFP.match(url.path):
                self._kfp(match, body)
            elif match := _API.match(url.path):
                self._tags(match, parse_qs(url.query), body)
            else:
                self._error(404, f"no route {self.command} {url.path}")

        def _kfp(self, match: re.Match, body: bytes) -> None:
            repository = registry.repository(match["location"], match["project"], match["repo"])
            if self.command == "POST" and not match["package"]:
                form = _multipart(self.headers["Content-Type"], body)
                tags = [t for t in form.get("tags", b"").decode().split(",") if t]
                package, digest = registry.upload(
                    match["location"], match["project"], match["repo"], tags, form["content"]
                )
                self._reply(200, f"{package}/{digest}".encode())
                return
            files = repository.files.get(match["package"] or "", {})
            reference = match["reference"] or ""
            digest = repository.tags.get(match["package"] or "", {}).get(reference, reference)
            if self.command != "GET" or digest not in files:
                self._error(404, f"{self.path} not found")
                return
            self._reply(200, files[digest])

        def _tags(self, match: re.Match, query: dict[str, list[str]], body: bytes) -> None:
            repository = registry.repository(match["location"], match["project"], match["repo"])
            package = match["package"]
            prefix = self.path.split("/tags")[0].removeprefix("/v1/")
            tags = repository.tags.get(package, {})
            tag = match["tag"] or (query.get("tagId") or [""])[0]
            if self.command == "GET":
                if tag not in tags:
                    self._error(404, f"Requested entity was not found: tag {tag}")
                    return
            else:
                digest = json.loads(body)["version"].rsplit("/", 1)[-1]
                if digest not in repository.files.get(package, {}):
                    self._error(404, f"version {digest} not found")
                    return
                if self.command == "POST" and tag in tags:
                    self._error(409, f"tag {tag} already exists")
                    return
                if self.command == "PATCH" and tag not in tags:
                    self._error(404, f"tag {tag} not found")
                    return
                repository.tags.setdefault(package, {})[tag] = digest
                tags = repository.tags[package]
            self._reply(
                200, {"name": f"{prefix}/tags/{tag}", "version": f"{prefix}/versions/{tags[tag]}"}
            )

        do_GET = do_POST = do_PATCH = do_DELETE = _handle

    return Handler


def _multipart(content_type: str, body: bytes) -> dict[str, bytes]:
    message = email.message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    return {
        part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
        for part in message.get_payload()
    }


GOOGLE_IMAGES = re.compile(
    r"^((us|europe|asia)-docker\.pkg\.dev/vertex-ai/|gcr\.io/ml-pipeline/|"
    r"us-docker\.pkg\.dev/vertex-ai-restricted/)"
)
"""Images Google publishes (prebuilt prediction and training images, the pipeline components'
launcher): every project can pull them."""


class ContainerImages:
    """The container images pushed to Artifact Registry, which Vertex AI can pull.

    Tests ``push`` what they (or docker/build.sh) would push; Google's own images are always
    there. A URI is held by its tag (``REPO/NAME:TAG``, no tag: ``latest``) or its digest
    (``REPO/NAME@sha256:...``, when pushed with one).
    """

    def __init__(self, *pushed: str) -> None:
        self._pushed: set[str] = set()
        self._lock = threading.Lock()
        for uri in pushed:
            self.push(uri)

    @staticmethod
    def _reference(uri: str) -> str:
        name = uri.rsplit("/", 1)[-1]
        return uri if ("@" in name or ":" in name) else f"{uri}:latest"

    def push(self, uri: str) -> str:
        with self._lock:
            self._pushed.add(self._reference(uri))
        return uri

    def holds(self, uri: str) -> bool:
        if GOOGLE_IMAGES.match(uri):
            return True
        with self._lock:
            return self._reference(uri) in self._pushed

    def missing(self, uri: str) -> str | None:
        """Vertex AI's refusal of an image that no registry holds, or None."""
        if self.holds(uri):
            return None
        return (
            f"Image {uri!r} does not exist, or the Vertex AI service agent cannot read it: push "
            "it to Artifact Registry (docker/build.sh) and grant the service agent "
            "roles/artifactregistry.reader on the repository."
        )
