"""The serving containers of deployed models: how each image loads and answers a model.

Vertex AI runs the model's ``container_spec.image_uri`` with the model's files and sends it the
endpoint's requests. The emulator does the same for the images it knows:

- Vertex AI's prebuilt TensorFlow images run TensorFlow Serving, which loads the SavedModel with
  the C++ loader behind a TF1 session and feeds the ``serving_default`` signature by tensor name.
  ``TFServingContainer`` takes that path (``components.lib.serving.tf_serving``, with one
  warm-up request), so a model that TF Serving cannot serve fails its deploy.
- Custom containers (``ProcessContainer``): the project's serving image (``python -m
  pipeline.serve``) or a command registered for the image runs as a subprocess with Vertex AI's
  variables (``AIP_HTTP_PORT``, ``AIP_HEALTH_ROUTE``,
  ``AIP_PREDICT_ROUTE``, ``AIP_STORAGE_URI``); the deploy succeeds once its health route answers
  200, and fails when the process exits first or stays unready.

Any other image fails the deploy: the emulator cannot run it.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from components.lib.serving.contract import OUTPUT_CLASSES, OUTPUT_PROBABILITIES, SERVING_INPUT
from tests.vertex_emulator.storage import CloudStorage, free_port

STAGING_BUCKET = "vertex-emulator-staging"
PREBUILT_TENSORFLOW = re.compile(
    r"^(us|europe|asia)-docker\.pkg\.dev/vertex-ai/prediction/tf2-(cpu|gpu)\.\d+-\d+(:.*)?$"
)


class DeployError(Exception):
    """The model server could not start; the message says why (the container's own words)."""


class PredictError(Exception):
    """A request the model server refused; ``invalid`` when the request itself is at fault."""

    def __init__(self, message: str, invalid: bool) -> None:
        super().__init__(message)
        self.invalid = invalid


class Container(Protocol):
    def predict(self, instances: list[Any], parameters: Any) -> list[Any]: ...

    def raw_predict(self, body: bytes, content_type: str) -> tuple[bytes, str]: ...

    def stop(self) -> None: ...


class ModelFiles:
    """A deployed model's copy of its artifacts, made on first use: a local folder for an
    in-process server, or a ``gs://`` folder (``AIP_STORAGE_URI``) for a container that reads
    it itself; Vertex AI also serves a copy, not ``artifact_uri`` itself."""

    def __init__(self, storage: CloudStorage, artifact_uri: str, deployed_id: str) -> None:
        self.storage = storage
        self.artifact_uri = artifact_uri
        self.deployed_id = deployed_id
        self._local_dir = ""

    def local_dir(self) -> str:
        if not self._local_dir:
            self._local_dir = tempfile.mkdtemp(prefix=f"vertex-emulator-{self.deployed_id}-")
            self.storage.download(self.artifact_uri, self._local_dir)
        return self._local_dir

    def storage_uri(self) -> str:
        # Unique: emulators that share a GCS emulator count deployed model ids alike.
        uri = f"gs://{STAGING_BUCKET}/{uuid.uuid4().hex}/{self.deployed_id}"
        self.storage.copy(self.artifact_uri, uri)
        return uri

    def remove(self) -> None:
        if self._local_dir:
            shutil.rmtree(self._local_dir, ignore_errors=True)


def _tiny_jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (128, 64, 32)).save(buffer, format="JPEG")
    return buffer.getvalue()


class TFServingContainer:
    """Vertex AI's prebuilt TensorFlow image: TF Serving holding the SavedModel in a TF1 session
    (``components.lib.serving.tf_serving``), answering its REST API's row format."""

    def __init__(self, model_dir: str) -> None:
        from components.lib.serving.tf_serving import TFServingError, load_like_tf_serving

        self._errors = TFServingError
        try:
            self._model = load_like_tf_serving(model_dir)
        except TFServingError as error:
            raise DeployError(str(error)) from None
        try:
            self._model([_tiny_jpeg()])  # a warm-up request, as TF Serving can be given
        except TFServingError as error:
            self._model.close()
            raise DeployError(f"the warm-up request failed: {error}") from None

    def predict(self, instances: list[Any], parameters: Any) -> list[Any]:
        import tensorflow as tf

        if not isinstance(instances, list) or not instances:
            raise PredictError('"instances" must be a non-empty list', invalid=True)
        images = [_instance_bytes(index, instance) for index, instance in enumerate(instances)]
        try:
            classes, probabilities = self._model(images)
        except self._errors as error:
            invalid = isinstance(error.__cause__, tf.errors.InvalidArgumentError)
            raise PredictError(str(error), invalid=invalid) from None
        return [
            {OUTPUT_CLASSES: int(label), OUTPUT_PROBABILITIES: row.tolist()}
            for label, row in zip(classes, probabilities, strict=True)
        ]

    def raw_predict(self, body: bytes, content_type: str) -> tuple[bytes, str]:
        try:
            request = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise PredictError(f"the body is not JSON: {error}", invalid=True) from None
        if not isinstance(request, dict):
            raise PredictError('the body must be {"instances": [...]}', invalid=True)
        predictions = self.predict(request.get("instances"), request.get("parameters"))
        return json.dumps({"predictions": predictions}).encode(), "application/json"

    def stop(self) -> None:
        self._model.close()


def _instance_bytes(index: int, instance: Any) -> bytes:
    """TF Serving's row format for the one string input: ``{"bytes": {"b64": ...}}``, or the
    value alone, ``{"b64": ...}``."""
    value = instance.get(SERVING_INPUT, instance) if isinstance(instance, dict) else instance
    if not (isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str)):
        raise PredictError(
            f'instance {index} must be {{"{SERVING_INPUT}": {{"b64": "..."}}}} or {{"b64": "..."}}',
            invalid=True,
        )
    try:
        return base64.b64decode(value["b64"], validate=True)
    except binascii.Error:
        raise PredictError(f"instance {index}: invalid base64", invalid=True) from None


@dataclass
class ProcessContainer:
    """A custom serving container run as a local process with Vertex AI's variables."""

    command: Sequence[str]
    files: ModelFiles
    env: dict[str, str] = field(default_factory=dict)
    health_route: str = "/health"
    predict_route: str = "/predict"
    startup_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        self.port = free_port()
        descriptor, self.log_path = tempfile.mkstemp(
            prefix="vertex-emulator-container-", suffix=".log"
        )
        # A container runs as Vertex AI's service account, not as the caller: none of the
        # caller's credentials (gcsfs would try to refresh them); the emulated storage needs none.
        inherited = {k: v for k, v in os.environ.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}
        environment = {
            **inherited,
            **self.env,
            "AIP_HTTP_PORT": str(self.port),
            "AIP_HEALTH_ROUTE": self.health_route,
            "AIP_PREDICT_ROUTE": self.predict_route,
            "AIP_STORAGE_URI": self.files.storage_uri(),
            "AIP_DEPLOYED_MODEL_ID": self.files.deployed_id,
            "AIP_MODE": "PREDICTION",
            # The container reads its model from the emulated Cloud Storage.
            "STORAGE_EMULATOR_HOST": self.files.storage.url,
        }
        with os.fdopen(descriptor, "wb") as log:
            self.process = subprocess.Popen(
                list(self.command),
                cwd=PROJECT_ROOT,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_until_healthy()

    def _url(self, route: str) -> str:
        return f"http://127.0.0.1:{self.port}{route}"

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DeployError(
                    f"Model server exited unexpectedly (exit code {self.process.returncode}): "
                    f"{self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(self._url(self.health_route), timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise DeployError(f"Model server never became ready: {self._log_tail()}")

    def _log_tail(self, lines: int = 3, width: int = 300) -> str:
        """What the container said last, errors first, as a log viewer shows it: a JSON record
        as its message and the last line of its exception."""
        with open(self.log_path, errors="replace") as file:
            records = [_log_line(line) for line in file.read().strip().splitlines()]
        errors = [text for text, error in records if error]
        tail = (errors or [text for text, _ in records])[-lines:]
        return " | ".join(text[:width] for text in tail) + f" (log: {self.log_path})"

    def raw_predict(self, body: bytes, content_type: str) -> tuple[bytes, str]:
        request = urllib.request.Request(
            self._url(self.predict_route), data=body, headers={"Content-Type": content_type}
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as reply:
                return reply.read(), reply.headers.get("Content-Type", "application/json")
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            raise PredictError(detail, invalid=400 <= error.code < 500) from None

    def predict(self, instances: list[Any], parameters: Any) -> list[Any]:
        body = json.dumps({"instances": instances, "parameters": parameters}).encode()
        answer, _ = self.raw_predict(body, "application/json")
        return json.loads(answer)["predictions"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _log_line(line: str) -> tuple[str, bool]:
    """A container's log line as text, and whether it reports an error."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict) or "message" not in record:
        return line.strip(), "Error" in line
    exception = str(record.get("exception", "")).strip().splitlines()
    text = f"{record['message']}: {exception[-1]}" if exception else str(record["message"])
    return text, record.get("severity") in ("ERROR", "CRITICAL")


def image_name(uri: str) -> str:
    """``REGISTRY/PROJECT/REPOSITORY/NAME:TAG`` (or ``@sha256:...``) -> ``NAME``."""
    return re.split(r"[:@]", uri.rsplit("/", 1)[-1], maxsplit=1)[0]


PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROJECT_SERVING_COMMAND = (sys.executable, "-m", "pipeline.serve")
"""The project's serving image's entrypoint (docker/Dockerfile.serving), run from this checkout."""
SERVING_IMAGE_ENV = "IMAGE_CLASSIFIER_EMULATOR_SERVING_IMAGE"
"""A built serving image (e.g. ``localhost/image-classifier-serving:0.1.0``): when set, the
project's serving image runs as that container (podman, the host's network), as on Vertex AI,
instead of the checkout's server."""
CONTAINER_VARIABLES = (
    "AIP_HTTP_PORT",
    "AIP_HEALTH_ROUTE",
    "AIP_PREDICT_ROUTE",
    "AIP_STORAGE_URI",
    "AIP_DEPLOYED_MODEL_ID",
    "AIP_MODE",
    "STORAGE_EMULATOR_HOST",
    "NO_GCE_CHECK",
)
"""What a serving container is given: Vertex AI's variables and the way to the emulated storage."""


def project_serving_command() -> Sequence[str]:
    """The command that stands for the project's serving image."""
    image = os.environ.get(SERVING_IMAGE_ENV)
    if not image:
        return PROJECT_SERVING_COMMAND
    passed = [word for name in CONTAINER_VARIABLES for word in ("-e", name)]
    return ("podman", "run", "--rm", "--network=host", *passed, image)


class ContainerRuntime:
    """Which container runs a model's image: the prebuilt TensorFlow images, the project's
    serving image (by its name, ``components.images``' serving one, in any registry), and custom
    images registered by URI prefix with the command that stands for their entrypoint."""

    def __init__(self, custom_images: dict[str, Sequence[str]] | None = None) -> None:
        self.custom_images = dict(custom_images or {})

    def _command(self, image: str) -> Sequence[str] | None:
        from components.images import PLACEHOLDERS

        if image_name(image) == image_name(PLACEHOLDERS.serving):
            return project_serving_command()
        return next((c for p, c in self.custom_images.items() if image.startswith(p)), None)

    def start(self, container_spec: Any, files: ModelFiles) -> Container:
        """Start the model server of ``container_spec`` (a ``ModelContainerSpec``) on
        ``files``; raises DeployError when it cannot serve."""
        image = container_spec.image_uri
        if PREBUILT_TENSORFLOW.match(image):
            return TFServingContainer(files.local_dir())
        command = self._command(image)
        if command is None:
            raise DeployError(
                f"the Vertex AI emulator cannot run the image {image!r}: it runs Vertex AI's "
                "prebuilt TensorFlow images, the project's serving image and the custom images "
                f"{sorted(self.custom_images)}"
            )
        # The process listens on a free port, passed as AIP_HTTP_PORT, not on the spec's port:
        # several versions may be served at once on this machine.
        return ProcessContainer(
            command=[*command, *container_spec.args],
            files=files,
            env={variable.name: variable.value for variable in container_spec.env},
            health_route=container_spec.health_route or "/health",
            predict_route=container_spec.predict_route or "/predict",
        )
