"""ModelService: the Model Registry with versions, aliases and labels, checked as Vertex AI checks.

UploadModel refuses an image that no registry holds (``ContainerImages``: what tests pushed).
It is long-running; its operation fails when ``artifact_uri`` is not in Cloud Storage,
or, for a prebuilt TensorFlow image, holds no SavedModel. A version alias lives on one version of
a model only: giving it to a new version moves it there, ``default`` included, and the first
version always gets ``default``. A version carries evaluations (ImportModelEvaluation: its
metrics and their schema are required) and each evaluation its slices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.cloud import aiplatform_v1 as v1

from tests.artifact_registry import ContainerImages
from tests.vertex_emulator.context import Context, now
from tests.vertex_emulator.resources import (
    ApiError,
    check_aliases,
    check_labels,
    display_name_filter,
    invalid,
    not_found,
)
from tests.vertex_emulator.serving import PREBUILT_TENSORFLOW
from tests.vertex_emulator.storage import split_uri

DEFAULT_ALIAS = "default"
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


@dataclass
class RegisteredModel:
    name: str
    versions: list[v1.Model] = field(default_factory=list)

    def default(self) -> v1.Model:
        return next(v for v in self.versions if DEFAULT_ALIAS in v.version_aliases)


class ModelRegistry:
    """State and RPCs of ``google.cloud.aiplatform.v1.ModelService``."""

    def __init__(self, context: Context, images: ContainerImages) -> None:
        self.context = context
        self.images = images
        self.models: dict[str, RegisteredModel] = {}
        # evaluation name -> (version id, evaluation); evaluation name -> its slices
        self.evaluations: dict[str, tuple[str, v1.ModelEvaluation]] = {}
        self.slices: dict[str, list[v1.ModelEvaluationSlice]] = {}

    def version(self, name: str) -> v1.Model:
        """``.../models/ID``, ``...@VERSION`` or ``...@ALIAS`` -> that version (a copy)."""
        model_name, _, wanted = self.context.names.canonical(name).partition("@")
        with self.context.lock:
            model = self.models.get(model_name)
            if model is None:
                raise not_found(f"Model {name}")
            if not wanted:
                return v1.Model(model.default())
            for version in model.versions:
                if wanted in (version.version_id, *version.version_aliases):
                    return v1.Model(version)
        raise not_found(f"Model {name}")

    def upload_model(self, request: v1.UploadModelRequest):
        parent = self.context.names.parent(request.parent)
        model = v1.Model(request.model)
        if not model.display_name:
            raise invalid("Model.display_name is required.")
        if not model.container_spec.image_uri:
            raise invalid("Model.container_spec.image_uri is required.")
        if problem := self.images.missing(model.container_spec.image_uri):
            raise invalid(problem)
        check_labels(dict(model.labels))
        check_aliases(list(model.version_aliases))
        if request.parent_model:
            name = self.context.names.canonical(request.parent_model)
            if not name.startswith(f"{parent}/models/"):
                raise invalid(f"parent_model {request.parent_model} is not in {parent}.")
            with self.context.lock:
                if name not in self.models:
                    raise not_found(f"Model {request.parent_model}")
        else:
            name = f"{parent}/models/{request.model_id or self.context.new_id()}"
            with self.context.lock:
                if name in self.models:
                    raise ApiError(grpc.StatusCode.ALREADY_EXISTS, f"Model {name} already exists.")

        def work() -> v1.UploadModelResponse:
            self._check_artifacts(model)
            return self._register(name, model)

        return self.context.operations.start(
            "UploadModel", name, v1.UploadModelOperationMetadata, work
        )

    def _check_artifacts(self, model: v1.Model) -> None:
        uri = model.artifact_uri
        if not uri:
            return
        if not uri.startswith("gs://"):
            raise invalid(f"Model.artifact_uri {uri!r} must be a Cloud Storage folder (gs://).")
        storage = self.context.storage
        if storage is None:
            return
        names = storage.list(uri)
        if not names:
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Model directory {uri} is empty or does not exist.",
            )
        _, prefix = split_uri(uri)
        top = {name[len(prefix) + 1 :] for name in names}
        if PREBUILT_TENSORFLOW.match(model.container_spec.image_uri) and (
            len(top & set(SAVED_MODEL_FILES)) != 1
        ):
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Model directory {uri} is expected to contain exactly one of: "
                f"[{', '.join(SAVED_MODEL_FILES)}].",
            )

    def _register(self, name: str, model: v1.Model) -> v1.UploadModelResponse:
        with self.context.lock:
            registered = self.models.setdefault(name, RegisteredModel(name))
            aliases = list(model.version_aliases)
            if not registered.versions and DEFAULT_ALIAS not in aliases:
                aliases.append(DEFAULT_ALIAS)
            for version in registered.versions:
                kept = [a for a in version.version_aliases if a not in aliases]
                version.version_aliases = kept
            stamp = now()
            model.name = name
            model.version_id = str(len(registered.versions) + 1)
            model.version_aliases = aliases
            model.create_time = model.update_time = stamp
            model.version_create_time = model.version_update_time = stamp
            if registered.versions:
                first = registered.versions[0]
                model.display_name, model.create_time = first.display_name, first.create_time
            model.supported_deployment_resources_types = [
                v1.Model.DeploymentResourcesType.DEDICATED_RESOURCES
            ]
            registered.versions.append(model)
            return v1.UploadModelResponse(model=name, model_version_id=model.version_id)

    def get_model(self, request: v1.GetModelRequest) -> v1.Model:
        return self.version(request.name)

    def list_models(self, request: v1.ListModelsRequest) -> v1.ListModelsResponse:
        parent = self.context.names.parent(request.parent)
        wanted = display_name_filter(request.filter)
        with self.context.lock:
            found = [
                v1.Model(model.default())
                for name, model in self.models.items()
                if name.startswith(f"{parent}/")
                and (wanted is None or model.default().display_name == wanted)
            ]
        models, token = self.context.page(found, request)
        return v1.ListModelsResponse(models=models, next_page_token=token)

    def list_model_versions(self, request: v1.ListModelVersionsRequest):
        name = self.context.names.canonical(request.name)
        with self.context.lock:
            if name not in self.models:
                raise not_found(f"Model {request.name}")
            found = [v1.Model(version) for version in self.models[name].versions]
        versions, token = self.context.page(found, request)
        return v1.ListModelVersionsResponse(models=versions, next_page_token=token)

    def merge_version_aliases(self, request: v1.MergeVersionAliasesRequest) -> v1.Model:
        """``alias`` adds (moving it from another version), ``-alias`` removes."""
        target = self.version(request.name)
        added = [a for a in request.version_aliases if not a.startswith("-")]
        removed = [a[1:] for a in request.version_aliases if a.startswith("-")]
        check_aliases(added + removed)
        if DEFAULT_ALIAS in removed:
            raise invalid("The default version alias cannot be removed; move it instead.")
        with self.context.lock:
            for version in self.models[target.name].versions:
                if version.version_id == target.version_id:
                    kept = [a for a in version.version_aliases if a not in removed]
                    version.version_aliases = kept + [a for a in added if a not in kept]
                    version.version_update_time = now()
                    result = v1.Model(version)
                else:
                    version.version_aliases = [a for a in version.version_aliases if a not in added]
            return result

    # Evaluations: ImportModelEvaluation attaches one to a version (``parent`` names it, or the
    # default version); names are ``.../models/M/evaluations/E`` whichever version holds them.
    def import_model_evaluation(self, request: v1.ImportModelEvaluationRequest):
        version = self.version(request.parent)  # NOT_FOUND for a model or version not there
        evaluation = v1.ModelEvaluation(request.model_evaluation)
        if not evaluation.metrics_schema_uri:
            raise invalid("ModelEvaluation.metrics_schema_uri is required.")
        if not evaluation.metrics:
            raise invalid("ModelEvaluation.metrics is required.")
        evaluation.name = f"{version.name}/evaluations/{self.context.new_id()}"
        evaluation.create_time = now()
        with self.context.lock:
            self.evaluations[evaluation.name] = (version.version_id, evaluation)
            self.slices[evaluation.name] = []
        return v1.ModelEvaluation(evaluation)

    def _evaluation_name(self, name: str) -> str:
        """``.../models/M[@V]/evaluations/E`` -> the stored name, NOT_FOUND if it is not."""
        canonical = self.context.names.canonical(name)
        model, separator, rest = canonical.partition("/evaluations/")
        stored = f"{model.partition('@')[0]}{separator}{rest}"
        with self.context.lock:
            if not separator or stored not in self.evaluations:
                raise not_found(f"ModelEvaluation {name}")
        return stored

    def get_model_evaluation(self, request: v1.GetModelEvaluationRequest) -> v1.ModelEvaluation:
        name = self._evaluation_name(request.name)
        with self.context.lock:
            return v1.ModelEvaluation(self.evaluations[name][1])

    def list_model_evaluations(self, request: v1.ListModelEvaluationsRequest):
        version = self.version(request.parent)
        if request.filter:
            raise invalid(f"Unsupported filter {request.filter!r} (the emulator filters nothing).")
        with self.context.lock:
            found = [
                v1.ModelEvaluation(evaluation)
                for name, (version_id, evaluation) in self.evaluations.items()
                if name.startswith(f"{version.name}/") and version_id == version.version_id
            ]
        evaluations, token = self.context.page(found, request)
        return v1.ListModelEvaluationsResponse(model_evaluations=evaluations, next_page_token=token)

    def batch_import_model_evaluation_slices(
        self, request: v1.BatchImportModelEvaluationSlicesRequest
    ) -> v1.BatchImportModelEvaluationSlicesResponse:
        parent = self._evaluation_name(request.parent)
        created = []
        for index, evaluation_slice in enumerate(request.model_evaluation_slices):
            if not evaluation_slice.metrics_schema_uri:
                raise invalid(f"model_evaluation_slices[{index}].metrics_schema_uri is required.")
            if not evaluation_slice.slice_.dimension:
                raise invalid(f"model_evaluation_slices[{index}].slice.dimension is required.")
            stored = v1.ModelEvaluationSlice(evaluation_slice)
            stored.name = f"{parent}/slices/{self.context.new_id()}"
            stored.create_time = now()
            created.append(stored)
        with self.context.lock:
            self.slices[parent].extend(created)
        return v1.BatchImportModelEvaluationSlicesResponse(
            imported_model_evaluation_slices=[s.name for s in created]
        )

    def list_model_evaluation_slices(self, request: v1.ListModelEvaluationSlicesRequest):
        parent = self._evaluation_name(request.parent)
        if request.filter:
            raise invalid(f"Unsupported filter {request.filter!r} (the emulator filters nothing).")
        with self.context.lock:
            found = [v1.ModelEvaluationSlice(s) for s in self.slices[parent]]
        slices, token = self.context.page(found, request)
        return v1.ListModelEvaluationSlicesResponse(
            model_evaluation_slices=slices, next_page_token=token
        )
