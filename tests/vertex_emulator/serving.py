"""The serving containers of deployed models: how each image loads and answers a model.

Vertex AI runs the model's ``container_spec.image_uri`` with the model's files and sends it the
endpoint's requests. The emulator does the same for the images it knows:

- Vertex AI's prebuilt TensorFlow images run TensorFlow Serving, which loads the SavedModel with
  the C++ loader behind a TF1 session and feeds the ``serving_default`` signature by tensor name.
  ``TFServingContainer`` takes that path (``tf.compat.v1.saved_model.loader.load`` and one
  ``Session.run`` as a warm-up request), so a model that TF Serving cannot serve fails its deploy.
- Custom containers (``ProcessContainer``): a command registered for the image runs as a
  subprocess with Vertex AI's variables (``AIP_HTTP_PORT``, ``AIP_HEALTH_ROUTE``,
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
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from tests.vertex_emulator.storage import CloudStorage, free_port

STAGING_BUCKET = "vertex-emulator-staging"
PREBUILT_TENSORFLOW = re.compile(
    r"^(us|europe|asia)-docker\.pkg\.dev/vertex-ai/prediction/tf2-(cpu|gpu)\.\d+-\d+(:.*)?$"
)
SERVING_INPUT_FORMATS = 'instances of {"<input>": {"b64": "..."}} or {"b64": "..."}'


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
        uri = f"gs://{STAGING_BUCKET}/deployments/{self.deployed_id}"
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
    """A SavedModel held as TensorFlow Serving holds it: its own TF1 graph and session."""

    def __init__(self, model_dir: str) -> None:
        import tensorflow as tf

        self._tf = tf
        graph = tf.compat.v1.Graph()
        self._session = tf.compat.v1.Session(graph=graph)
        try:
            with graph.as_default():
                meta_graph = tf.compat.v1.saved_model.loader.load(
                    self._session, ["serve"], model_dir
                )
        except Exception as error:
            self._session.close()
            raise DeployError(
                f"TF Serving could not load the SavedModel: {_first_line(error)}"
            ) from None
        signature = meta_graph.signature_def.get("serving_default")
        if signature is None:
            self._session.close()
            raise DeployError("the SavedModel has no 'serving_default' signature")
        self._inputs = {name: info.name for name, info in signature.inputs.items()}
        self._string_inputs = {
            name
            for name, info in signature.inputs.items()
            if info.dtype == tf.string.as_datatype_enum
        }
        self._outputs = {name: info.name for name, info in signature.outputs.items()}
        if len(self._inputs) == 1 and self._string_inputs:
            try:
                self.predict([{"b64": base64.b64encode(_tiny_jpeg()).decode()}], None)
            except PredictError as error:
                self._session.close()
                raise DeployError(f"the warm-up request failed: {error}") from None

    def _feed(self, instances: list[Any]) -> dict[str, list[Any]]:
        """TF Serving's row format: an instance is a dict of input name -> value, or one value
        when the signature has one input; ``{"b64": ...}`` is a string input's bytes."""
        if not isinstance(instances, list) or not instances:
            raise PredictError('"instances" must be a non-empty list', invalid=True)
        names = sorted(self._inputs)
        columns: dict[str, list[Any]] = {name: [] for name in names}
        for index, instance in enumerate(instances):
            named = isinstance(instance, dict) and set(instance) == set(names)
            if not named and len(names) != 1:
                raise PredictError(f"instance {index} must name the inputs {names}", invalid=True)
            values = instance if named else {names[0]: instance}
            for name, value in values.items():
                columns[name].append(self._value(index, name, value))
        return columns

    def _value(self, index: int, name: str, value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"b64"} and name in self._string_inputs:
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, TypeError):
                raise PredictError(f"instance {index}: invalid base64 in {name!r}", True) from None
        if isinstance(value, dict):
            raise PredictError(
                f"instance {index}: unexpected object for input {name!r}; expected "
                f"{SERVING_INPUT_FORMATS}",
                invalid=True,
            )
        return value

    def predict(self, instances: list[Any], parameters: Any) -> list[Any]:
        import numpy as np

        columns = self._feed(instances)
        feed = {
            self._inputs[name]: np.asarray(
                values, dtype=object if name in self._string_inputs else None
            )
            for name, values in columns.items()
        }
        names = sorted(self._outputs)
        try:
            results = self._session.run([self._outputs[name] for name in names], feed_dict=feed)
        except self._tf.errors.InvalidArgumentError as error:
            raise PredictError(_first_line(error), invalid=True) from None
        except self._tf.errors.OpError as error:
            raise PredictError(_first_line(error), invalid=False) from None
        rows = []
        for row in range(len(instances)):
            values = {
                name: _plain(result[row]) for name, result in zip(names, results, strict=True)
            }
            rows.append(values if len(names) > 1 else next(iter(values.values())))
        return rows

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
        self._session.close()


def _plain(value: Any) -> Any:
    """A NumPy value as JSON-ready Python (bytes as TF Serving writes them: base64)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _first_line(error: BaseException) -> str:
    """The line that says what went wrong, as TF Serving reports it: ``CODE: message``."""
    message = getattr(error, "message", None) or str(error)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    lines = [line for line in lines if line != "Graph execution error:"] or [type(error).__name__]
    code = getattr(error, "error_code", None)
    names = {status.value[0]: status.name for status in grpc.StatusCode}
    return f"{names[code]}: {lines[0]}" if code in names else lines[0]


@dataclass
class ProcessContainer:
    """A custom serving container run as a local process with Vertex AI's variables."""

    command: Sequence[str]
    files: ModelFiles
    env: dict[str, str] = field(default_factory=dict)
    health_route: str = "/health"
    predict_route: str = "/predict"
    startup_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        self.port = free_port()
        descriptor, self.log_path = tempfile.mkstemp(
            prefix="vertex-emulator-container-", suffix=".log"
        )
        environment = {
            **os.environ,
            **self.env,
            "AIP_HTTP_PORT": str(self.port),
            "AIP_HEALTH_ROUTE": self.health_route,
            "AIP_PREDICT_ROUTE": self.predict_route,
            "AIP_STORAGE_URI": self.files.storage_uri(),
        }
        with os.fdopen(descriptor, "wb") as log:
            self.process = subprocess.Popen(
                list(self.command), env=environment, stdout=log, stderr=subprocess.STDOUT
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

    def _log_tail(self, lines: int = 5) -> str:
        with open(self.log_path, errors="replace") as file:
            tail = file.read().strip().splitlines()[-lines:]
        return " | ".join(tail) + f" (log: {self.log_path})"

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


class ContainerRuntime:
    """Which container runs a model's image; custom images are registered by name prefix."""

    def __init__(self, custom_images: dict[str, Sequence[str]] | None = None) -> None:
        self.custom_images = dict(custom_images or {})

    def start(self, container_spec: Any, files: ModelFiles) -> Container:
        """Start the model server of ``container_spec`` (a ``ModelContainerSpec``) on
        ``files``; raises DeployError when it cannot serve."""
        image = container_spec.image_uri
        if PREBUILT_TENSORFLOW.match(image):
            return TFServingContainer(files.local_dir())
        for prefix, command in self.custom_images.items():
            if image.startswith(prefix):
                # The process listens on a free port, passed as AIP_HTTP_PORT, not on the
                # spec's port: several versions may be served at once on this machine.
                return ProcessContainer(
                    command=[*command, *container_spec.args],
                    files=files,
                    env={variable.name: variable.value for variable in container_spec.env},
                    health_route=container_spec.health_route or "/health",
                    predict_route=container_spec.predict_route or "/predict",
                )
        raise DeployError(
            f"the Vertex AI emulator cannot run the image {image!r}: it runs Vertex AI's prebuilt "
            f"TensorFlow images and the custom images {sorted(self.custom_images)}"
        )
