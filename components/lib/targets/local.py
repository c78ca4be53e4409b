"""A local model registry and local endpoints that mirror Vertex AI's nouns.

A model (found by display name) has numbered versions, each with its artifact, metrics, labels
and aliases; an endpoint has deployed model versions and a traffic split. Records are JSON files
written atomically under one lock, so a crash or a second run never leaves a half-written record.
Paths inside the state folder are stored relative to it and resolved when read, so the folder can
be moved or copied whole; records written with absolute paths are still read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import glob
import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

from components.lib.serving import routing
from components.lib.storage import is_gcs, local_copy, normalized_uri
from components.lib.targets.base import (
    DEFAULT_ALIAS,
    DEFAULT_SERVING,
    EVAL_FINGERPRINT,
    NEW_DEPLOYMENT,
    ROWS_PATH,
    Deployment,
    ModelEvaluationRecord,
    ModelVersion,
    RunValue,
    Serving,
    most_traffic,
    pick_deployment,
    plan_traffic,
    resource_id,
    split_reference,
)

STATE_DIR_ENV = "IMAGE_CLASSIFIER_STATE_DIR"


def default_state_dir() -> str:
    """Where a local run keeps its registry and endpoints unless told otherwise:
    ``$IMAGE_CLASSIFIER_STATE_DIR``, else ``.vertex-local``."""
    return os.environ.get(STATE_DIR_ENV, ".vertex-local")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _write_json_atomic(path: str, record: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w") as file:
            json.dump(record, file, indent=2)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


class CorruptRecordError(ValueError):
    """A record of the local registry or endpoints that is not the JSON it should be."""


def _read_json(path: str) -> dict[str, Any] | None:
    """The record at ``path``, None if there is none; CorruptRecordError (naming the file) if
    it cannot be read as JSON."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as file:
            return json.load(file)
    except (ValueError, RecursionError) as error:  # not JSON, or not UTF-8
        raise CorruptRecordError(f"{path} is not a readable JSON record: {error}") from None


class _LocalStore:
    """Shared location, naming and locking of the local registry and endpoints."""

    def __init__(self, root: str, project: str, location: str) -> None:
        self.root = os.path.abspath(root)
        self.project = project
        self.location = location

    def _resource(self, collection: str, resource: str) -> str:
        return f"projects/{self.project}/locations/{self.location}/{collection}/{resource}"

    def _stored(self, path: str) -> str:
        """``path`` as a record keeps it: relative to the state folder when inside it."""
        if is_gcs(path) or not os.path.abspath(path).startswith(os.path.join(self.root, "")):
            return path
        return os.path.relpath(os.path.abspath(path), self.root)

    def _resolved(self, stored: str, *canonical: str) -> str:
        """A stored path read back: a relative one under this state folder. An absolute one
        (a record written before paths were relative) where it is, or, when it is gone (the
        folder was moved), at its ``canonical`` place under this state folder."""
        if is_gcs(stored) or not stored:
            return stored
        if not os.path.isabs(stored):
            return os.path.join(self.root, stored)
        moved = os.path.join(self.root, *canonical) if canonical else ""
        return moved if moved and not os.path.exists(stored) and os.path.exists(moved) else stored

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        os.makedirs(self.root, exist_ok=True)
        with open(os.path.join(self.root, ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


class ModelRegistry(_LocalStore):
    """Models and their versions under ``<root>/models/<model id>/``."""

    def _record_path(self, model_id: str) -> str:
        return os.path.join(self.root, "models", model_id, "model.json")

    def get_model(self, display_name: str) -> dict[str, Any] | None:
        return _read_json(self._record_path(resource_id(display_name)))

    def upload_version(
        self,
        display_name: str,
        artifact_dir: str,
        metrics: dict[str, float],
        labels: dict[str, str],
        aliases: Sequence[str] = (),
        description: str = "",
    ) -> ModelVersion:
        """Copy ``artifact_dir`` in as the next version; move ``default`` and ``aliases`` onto it.

        Creates the model on its first upload, as Vertex's ``Model.upload(parent_model=...)`` does;
        ``description`` is the version's description (Vertex's ``version_description``).
        An artifact that is already registered (a re-run whose training was cached) returns its
        existing version instead of a duplicate.
        """
        model_id = resource_id(display_name)
        source_uri = normalized_uri(artifact_dir)
        with self._lock():
            record = _read_json(self._record_path(model_id)) or {
                "name": self._resource("models", model_id),
                "displayName": display_name,
                "createTime": _now(),
                "versions": [],
            }
            existing = self._version_from(record, source_uri)
            if existing:
                return existing
            version_id = str(len(record["versions"]) + 1)
            artifact_uri = os.path.join(self.root, "models", model_id, "versions", version_id)
            shutil.rmtree(artifact_uri, ignore_errors=True)
            shutil.copytree(local_copy(artifact_dir), artifact_uri)
            new_aliases = [DEFAULT_ALIAS, *(a for a in aliases if a != DEFAULT_ALIAS)]
            for version in record["versions"]:
                version["versionAliases"] = [
                    alias for alias in version["versionAliases"] if alias not in new_aliases
                ]
            record["versions"].append(
                {
                    "versionId": version_id,
                    "artifactUri": self._stored(artifact_uri),
                    "sourceUri": self._stored(source_uri),
                    "versionAliases": new_aliases,
                    "metrics": metrics,
                    "labels": labels,
                    "versionDescription": description,
                    "createTime": _now(),
                }
            )
            _write_json_atomic(self._record_path(model_id), record)
        return ModelVersion(record["name"], version_id, display_name, artifact_uri, source_uri)

    def find_version(self, display_name: str, source_uri: str) -> ModelVersion | None:
        """The version registered from the artifact at ``source_uri``, if any."""
        record = self.get_model(display_name)
        return self._version_from(record, normalized_uri(source_uri)) if record else None

    def resolve(self, reference: str) -> ModelVersion:
        """The version named by ``reference``; KeyError says what exists."""
        name, wanted = split_reference(reference)
        model_id = name.rsplit("/", 1)[-1] if name.startswith("projects/") else resource_id(name)
        record = self.get_model(model_id)
        if record is None:
            raise KeyError(f"no model {name!r} in the local registry at {self.root}")
        for version in record["versions"]:
            if wanted == version["versionId"] or wanted in version["versionAliases"]:
                return self._model_version(record, version)
        known = ", ".join(
            "@".join([v["versionId"], *v["versionAliases"]]) for v in record["versions"]
        )
        raise KeyError(f"{name} has no version or alias {wanted!r} (versions: {known})")

    def get_version(self, model: str, version_id: str) -> ModelVersion:
        """Look up ``model`` (resource name) at ``version_id``; KeyError if it is not registered."""
        record = _read_json(self._record_path(model.rsplit("/", 1)[-1]))
        for version in (record or {}).get("versions", []):
            if version["versionId"] == version_id:
                return self._model_version(record, version)
        raise KeyError(f"{model}@{version_id} is not in the local registry at {self.root}")

    def import_evaluation(
        self, version: ModelVersion, evaluation: ModelEvaluationRecord
    ) -> ModelEvaluationRecord:
        """Keep ``evaluation`` with ``version`` in the model's record, as Vertex AI's
        ImportModelEvaluation and BatchImportModelEvaluationSlices do, with a copy of its
        per-photo results (the registry owns its copy, as it does of the model); one per
        fingerprint."""
        model_id = version.model.rsplit("/", 1)[-1]
        with self._lock():
            record = _read_json(self._record_path(model_id))
            stored = _stored_version(record, version, self.root)
            evaluations = stored.setdefault("evaluations", [])
            for existing in evaluations:
                if existing["metadata"].get(EVAL_FINGERPRINT) == evaluation.fingerprint:
                    return self._evaluation(model_id, existing)
            number = 1 + sum(len(v.get("evaluations", [])) for v in record["versions"])
            name = f"{version.model}/evaluations/{number}"
            rows = os.path.join(self.root, "models", model_id, "evaluations", str(number))
            os.makedirs(rows, exist_ok=True)
            rows_copy = os.path.join(rows, os.path.basename(evaluation.rows_uri))
            shutil.copyfile(local_copy(evaluation.rows_uri), rows_copy)
            stored_evaluation = {
                "name": name,
                "displayName": evaluation.display_name,
                "metricsSchemaUri": evaluation.metrics_schema_uri,
                "metrics": evaluation.metrics,
                "metadata": dataclasses.replace(
                    evaluation, rows_uri=self._stored(rows_copy)
                ).registry_metadata(),
                "sliceDimensions": sorted({s["dimension"] for s in evaluation.slices}),
                "slices": [
                    {**evaluation_slice, "name": f"{name}/slices/{index}"}
                    for index, evaluation_slice in enumerate(evaluation.slices, start=1)
                ],
                "createTime": _now(),
            }
            evaluations.append(stored_evaluation)
            _write_json_atomic(self._record_path(model_id), record)
        return self._evaluation(model_id, stored_evaluation)

    def list_evaluations(self, version: ModelVersion) -> list[ModelEvaluationRecord]:
        """The evaluations kept with ``version``, oldest first."""
        model_id = version.model.rsplit("/", 1)[-1]
        stored = _stored_version(_read_json(self._record_path(model_id)), version, self.root)
        return [self._evaluation(model_id, e) for e in stored.get("evaluations", [])]

    def _evaluation(self, model_id: str, stored: dict[str, Any]) -> ModelEvaluationRecord:
        rows = stored["metadata"].get(ROWS_PATH, "")
        number = stored["name"].rsplit("/", 1)[-1]
        metadata = {
            **stored["metadata"],
            ROWS_PATH: self._resolved(
                rows, "models", model_id, "evaluations", number, os.path.basename(rows)
            ),
        }
        return ModelEvaluationRecord.from_registry(
            name=stored["name"],
            display_name=stored["displayName"],
            metrics_schema_uri=stored["metricsSchemaUri"],
            metrics=stored["metrics"],
            metadata=metadata,
            slices=[{k: v for k, v in s.items() if k != "name"} for s in stored["slices"]],
        )

    def _model_version(self, record: dict[str, Any], version: dict[str, Any]) -> ModelVersion:
        model_id = record["name"].rsplit("/", 1)[-1]
        return ModelVersion(
            record["name"],
            version["versionId"],
            record["displayName"],
            self._resolved(
                version["artifactUri"], "models", model_id, "versions", version["versionId"]
            ),
            self._resolved(version["sourceUri"]),
        )

    def _version_from(self, record: dict[str, Any], source_uri: str) -> ModelVersion | None:
        for version in record["versions"]:
            if self._resolved(version["sourceUri"]) == source_uri:
                return self._model_version(record, version)
        return None


def _stored_version(
    record: dict[str, Any] | None, version: ModelVersion, root: str
) -> dict[str, Any]:
    for stored in (record or {}).get("versions", []):
        if stored["versionId"] == version.version_id:
            return stored
    raise KeyError(f"{version.resource_name} is not in the local registry at {root}")


class EndpointRegistry(_LocalStore):
    """Endpoints under ``<root>/endpoints/<endpoint id>.json``."""

    def __init__(self, root: str, project: str, location: str, serving: Serving = DEFAULT_SERVING):
        super().__init__(root, project, location)
        self.serving = serving

    def _record_path(self, endpoint_id: str) -> str:
        return os.path.join(self.root, "endpoints", f"{endpoint_id}.json")

    def get(self, endpoint_id: str) -> dict[str, Any] | None:
        return _read_json(self._record_path(endpoint_id))

    def served_version(self, display_name: str) -> tuple[str, str] | None:
        """(model, version id) taking most of the endpoint's traffic; None if it serves nothing."""
        record = self.get(resource_id(display_name)) or {}
        served = most_traffic(_deployments(record), record.get("trafficSplit", {}))
        return (served.model, served.version_id) if served else None

    def deploy(self, display_name: str, version: ModelVersion) -> dict[str, Any]:
        """Serve ``version`` with ``serving.traffic_percentage`` of the traffic (``plan_traffic``).

        Creates the endpoint if needed. The record is replaced in one atomic write, so the
        endpoint serves either the old split or the new one, never neither; a deploy that
        changes nothing writes nothing (``changed`` False).
        """
        endpoint_id = resource_id(display_name)
        with self._lock():
            record = self.get(endpoint_id) or {
                "name": self._resource("endpoints", endpoint_id),
                "displayName": display_name,
                "createTime": _now(),
                "deployedModels": [],
                "trafficSplit": {},
            }
            plan = plan_traffic(
                _deployments(record),
                record["trafficSplit"],
                version.model,
                version.version_id,
                self.serving.traffic_percentage,
            )
            if plan.unchanged:
                return {**record, "changed": False}
            deployed_id = f"{version.model.rsplit('/', 1)[-1]}-v{version.version_id}"
            retired = {d.id for d in plan.retire}
            record["deployedModels"] = [
                d for d in record["deployedModels"] if d["id"] not in retired
            ]
            if plan.existing is None:
                record["deployedModels"].append(
                    {
                        "id": deployed_id,
                        "model": version.model,
                        "modelVersionId": version.version_id,
                        "displayName": version.display_name,
                        "createTime": _now(),
                    }
                )
            record["trafficSplit"] = {
                deployed_id if key == NEW_DEPLOYMENT else key: share
                for key, share in plan.split.items()
            }
            record["updateTime"] = _now()
            _write_json_atomic(self._record_path(endpoint_id), record)
        return {**record, "changed": True}

    def deployments(self, display_name: str) -> tuple[list[Deployment], dict[str, int], str]:
        """The endpoint's deployments, traffic split and resource name (KeyError: no endpoint)."""
        record = self.get(resource_id(display_name))
        if record is None:
            raise KeyError(f"no local endpoint {display_name!r} under {self.root}")
        return _deployments(record), dict(record["trafficSplit"]), record["name"]

    def set_traffic(
        self, display_name: str, split: dict[str, int], retire: Sequence[str], review: dict
    ) -> dict[str, Any]:
        """Give the endpoint ``split``, undeploy ``retire`` and keep ``review`` (why) in its
        record's ``canaryReviews``, newest last; one atomic write."""
        endpoint_id = resource_id(display_name)
        with self._lock():
            record = self.get(endpoint_id)
            if record is None:
                raise KeyError(f"no local endpoint {display_name!r} under {self.root}")
            record["deployedModels"] = [
                d for d in record["deployedModels"] if d["id"] not in set(retire)
            ]
            record["trafficSplit"] = dict(split)
            record.setdefault("canaryReviews", []).append({**review, "time": _now()})
            record["updateTime"] = _now()
            _write_json_atomic(self._record_path(endpoint_id), record)
        return record


def _deployments(record: dict[str, Any]) -> list[Deployment]:
    return [
        Deployment(d["id"], d["model"], d["modelVersionId"])
        for d in record.get("deployedModels", [])
    ]


class LocalEndpoints:
    """Every local endpoint under a state folder, for the prediction server (its
    ``EndpointRouter``). Records are read on every request, so a new deployment serves at once."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self._rng = random.Random()

    def endpoint_names(self) -> list[str]:
        paths = sorted(glob.glob(os.path.join(self.root, "endpoints", "*.json")))
        return [record["name"] for path in paths if (record := _read_json(path))]

    def route(self, project: str, location: str, endpoint_id: str) -> routing.Deployment:
        """The deployed version that takes this request, drawn by the endpoint's traffic split."""
        name = f"projects/{project}/locations/{location}/endpoints/{endpoint_id}"
        record = EndpointRegistry(self.root, project, location).get(endpoint_id)
        if record is None or record["name"] != name:
            raise routing.EndpointNotFoundError(f"endpoint {name} not found")
        if not record.get("deployedModels"):
            raise routing.NothingDeployedError(f"endpoint {name} has no deployed model")
        deployed_id = pick_deployment(record["trafficSplit"], self._rng)
        deployed = next(d for d in record["deployedModels"] if d["id"] == deployed_id)
        version = ModelRegistry(self.root, project, location).get_version(
            deployed["model"], deployed["modelVersionId"]
        )
        return routing.Deployment(
            artifact_uri=version.artifact_uri,
            deployed_model_id=deployed_id,
            model=deployed["model"],
            model_version_id=deployed["modelVersionId"],
            model_display_name=deployed["displayName"],
        )


class Experiments(_LocalStore):
    """Runs under ``<root>/experiments/<experiment>/<run>.json``, as Vertex AI Experiments keeps
    them: parameters, final metrics and the time, one file per run."""

    def record_run(
        self, experiment: str, run: str, params: dict[str, RunValue], metrics: dict[str, float]
    ) -> str:
        path = os.path.join(self.root, "experiments", experiment, f"{run}.json")
        record = {
            "experiment": experiment,
            "run": run,
            "params": params,
            "metrics": metrics,
            "createTime": _now(),
        }
        with self._lock():
            if os.path.exists(path):
                raise FileExistsError(f"experiment {experiment!r} has a run {run!r} already")
            _write_json_atomic(path, record)
        return path
