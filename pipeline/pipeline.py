"""The training pipeline: download, validate, preprocess, backbone features, train, evaluate,
infra validation (the model served as Vertex AI serves it), then behind the gate upload and
deploy.

Its parameters, with their descriptions (shown in the Vertex Pipelines console), are the one
place where a run is configured; their defaults are read from the settings dataclasses of the
library (``SourceOptions``, ``TrainingConfig``, ``GateRule``, ...), which own them. Compute
resources of the train step (``TrainResources``) and the images the steps run in
(``components.images``) are set at compile time: KFP compiles them into the spec.
"""

import copy
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from google_cloud_pipeline_components import _placeholders
from google_cloud_pipeline_components.v1.custom_job import (
    create_custom_training_job_from_component,
)
from google_cloud_pipeline_components.v1.hyperparameter_tuning_job import (
    HyperparameterTuningJobRunOp,
    serialize_metrics,
    serialize_parameters,
)
from kfp import dsl
from kfp.dsl import pipeline_context
from kfp.dsl.base_component import BaseComponent
from kfp.dsl.pipeline_channel import PipelineChannel

from components.deploy import deploy_model
from components.download import download_data
from components.evaluate import evaluate_model
from components.features import extract_features
from components.fingerprint import fingerprint_data
from components.gate import report_not_deployed
from components.images import PLACEHOLDERS, ImageSet, Role
from components.infra_validate import infra_validate
from components.lib.data.options import (
    SEED,
    PreprocessOptions,
    SourceOptions,
    ValidationOptions,
)
from components.lib.evaluation.rule import GateRule
from components.lib.modelling.config import ExportOptions, TrainingConfig
from components.lib.targets.base import Registration, Serving
from components.lib.targets.machines import check_machine, machine_for
from components.lib.tuning.study import OFF, STUDY, VERTEX, TuningOptions
from components.parameters import check_parameters
from components.preprocess import preprocess_data
from components.target import resolve_target
from components.train import train_model
from components.tune import (
    best_trial,
    given_hyperparameters,
    plan_tuning,
    search_hyperparameters,
    tuning_job_spec,
)
from components.upload import upload_model
from components.validate import validate_data

PIPELINE_NAME = "image-classifier-training"
CHALLENGE_DATA_URI = "gs://ml6_junior_ml_engineer_challenge_cv_beer_data/data"
TENSORBOARD_NAME = re.compile(r"projects/[^/]+/locations/[^/]+/tensorboards/[^/]+")
# The pipeline parameters' defaults, read from the settings dataclasses that own them: the one
# authority for each (tests/test_defaults.py compares the compiled pipeline with them).
SOURCE = SourceOptions()
VALIDATION = ValidationOptions()
PREPROCESS = PreprocessOptions()
TRAINING = TrainingConfig()
EXPORT = ExportOptions()
GATE = GateRule()
REGISTRATION = Registration()
SERVING = Serving()
TUNING = TuningOptions()


@dataclass(frozen=True)
class TrainResources:
    """What the train step asks of Vertex AI: one T4 GPU, 8 CPUs, 30G by default.

    By default the train step is a plain pipeline component, which is also what kfp.local runs.
    It becomes a Vertex AI custom training job (``custom_job``) when it asks for what only such
    a job offers: more than one replica, a machine type, spot VMs or a Vertex AI TensorBoard.
    The job (and each tuning trial) then runs ``replica_count`` machines of ``machine_type``
    (if empty, ``machines.machine_for`` the GPUs: G2 for L4, A2 for A100...), each with
    ``accelerator_count`` GPUs of ``accelerator_type`` (none if empty): one chief and
    ``replica_count - 1`` workers, with TF_CONFIG set by Vertex AI. ``cpu_limit`` and
    ``memory_limit`` apply to the plain component only; a job's machine type sets both.
    """

    accelerator_type: str = "NVIDIA_TESLA_T4"
    accelerator_count: int = 1
    cpu_limit: str = "8"
    memory_limit: str = "30G"
    replica_count: int = 1
    machine_type: str = ""
    spot: bool = False
    tensorboard: str = ""
    """A Vertex AI TensorBoard (``projects/P/locations/L/tensorboards/ID``) that the job streams
    its training logs to."""

    def __post_init__(self) -> None:
        if self.replica_count < 1:
            raise ValueError(f"replica_count must be at least 1, got {self.replica_count}")
        if self.accelerator_count < 0:
            raise ValueError(f"accelerator_count must be 0 or more, got {self.accelerator_count}")
        # Vertex AI would refuse a GPU on another machine family only once the job starts,
        # after the data steps; the table refuses it here.
        check_machine(self.job_machine_type, self.accelerator_type, self.accelerator_count)
        if self.tensorboard and not TENSORBOARD_NAME.fullmatch(self.tensorboard):
            raise ValueError(
                f"tensorboard {self.tensorboard!r}: give the instance's resource name, "
                "projects/PROJECT/locations/REGION/tensorboards/ID (gcloud ai tensorboards list)"
            )

    @property
    def job_machine_type(self) -> str:
        """The machine of each custom job replica and tuning trial: the one named, or the
        GPU's family's (``machines.machine_for``)."""
        return self.machine_type or machine_for(self.accelerator_type, self.accelerator_count)

    @property
    def custom_job(self) -> bool:
        """Whether the train step runs as a Vertex AI custom training job."""
        return (
            self.replica_count > 1 or bool(self.machine_type) or self.spot or bool(self.tensorboard)
        )


class PipelineOutputs(NamedTuple):
    accuracy: float
    champion_accuracy: float
    deployed: bool
    decision: str
    model_version: str
    endpoint: str
    report: dsl.HTML
    evaluation: dict


def _in_image(component: BaseComponent, image: str) -> BaseComponent:
    """A copy of ``component`` whose container runs ``image``."""
    copied = copy.deepcopy(component)
    copied.component_spec.implementation.container.image = image
    return copied


def _train_task(resources: TrainResources, image: str, **inputs: Any) -> dsl.PipelineTask:
    """The train task: a plain component, or a custom training job (``TrainResources``)."""
    if not resources.custom_job:
        return (
            train_model(**inputs)
            .set_accelerator_type(resources.accelerator_type)
            .set_accelerator_limit(resources.accelerator_count)
            .set_cpu_limit(resources.cpu_limit)
            .set_memory_limit(resources.memory_limit)
        )
    # The job's workers run the component's own container, so the image is set on the
    # component before wrapping; the task itself runs Google's launcher image.
    job = create_custom_training_job_from_component(
        _in_image(train_model, image),
        display_name=f"{PIPELINE_NAME}-train",
        replica_count=resources.replica_count,
        machine_type=resources.job_machine_type,
        accelerator_type=resources.accelerator_type,
        accelerator_count=resources.accelerator_count,
        # A preempted (spot) or failed worker restarts the whole job, which resumes from the
        # train step's checkpoints: multi-worker training does not survive a worker leaving.
        restart_job_on_worker_restart=True,
        strategy="SPOT" if resources.spot else "STANDARD",
        # The pipeline's identity, as a plain step has; left empty, the job would run as
        # Vertex AI's Custom Code Service Agent, which may not read the pipeline's bucket.
        service_account=_placeholders.SERVICE_ACCOUNT_PLACEHOLDER,
        # With a TensorBoard, Vertex AI sets AIP_TENSORBOARD_LOG_DIR to <base>/logs/ and
        # streams what the train step writes there to it; one folder per pipeline job.
        tensorboard=resources.tensorboard,
        base_output_directory=(
            f"{dsl.PIPELINE_ROOT_PLACEHOLDER}/{dsl.PIPELINE_JOB_ID_PLACEHOLDER}/train-job"
            if resources.tensorboard
            else ""
        ),
    )
    # The job's project and location are left at their defaults, the pipeline job's own.
    return job(**inputs)


def _hyperparameters(
    checked: dsl.PipelineTask,
    tuning_trials: PipelineChannel,
    raw_data: PipelineChannel,
    resources: TrainResources,
    image: str,
    given: dict[str, Any],
    **settings: Any,
) -> dict[str, dsl.OneOf]:
    """The tasks, after the ``checked`` parameters, that settle the parameters ``STUDY``
    tunes: the ``given`` ones with no trials, else the best trial's, from a Vertex AI tuning
    job (the pipeline root in Cloud Storage) or from the search step. Returns them by name,
    for the steps that train.

    The trials train as the train step does (``settings``: its other parameters, the image
    size and the validation share) on machines like the train job's.
    """
    plan = (
        plan_tuning(tuning_trials=tuning_trials, pipeline_root=dsl.PIPELINE_ROOT_PLACEHOLDER)
        .set_display_name("tuning-plan")
        .after(checked)
    )
    with dsl.If(plan.outputs["mode"] == OFF, name="no-tuning"):
        chosen = [given_hyperparameters(**given).set_display_name("hyperparameters")]
    with dsl.Elif(plan.outputs["mode"] == VERTEX, name="tuning-on-vertex"):
        spec = tuning_job_spec(
            raw_data=raw_data,
            image=image,
            machine_type=resources.job_machine_type,
            accelerator_type=resources.accelerator_type,
            accelerator_count=resources.accelerator_count,
            **settings,
        ).set_display_name("tuning-job-spec")
        job = HyperparameterTuningJobRunOp(
            display_name=f"{PIPELINE_NAME}-tuning",
            base_output_directory=spec.outputs["base_output_directory"],
            worker_pool_specs=spec.outputs["worker_pool_specs"],
            study_spec_metrics=serialize_metrics(STUDY.metric_spec()),
            study_spec_parameters=serialize_parameters(STUDY.vertex_parameter_specs()),
            study_spec_algorithm=STUDY.algorithm,
            max_trial_count=tuning_trials,
            parallel_trial_count=plan.outputs["parallel_trials"],
            location=_placeholders.LOCATION_PLACEHOLDER,
            service_account=_placeholders.SERVICE_ACCOUNT_PLACEHOLDER,
        ).set_display_name("tuning-job")
        chosen.append(
            best_trial(gcp_resources=job.outputs["gcp_resources"]).set_display_name("best-trial")
        )
    with dsl.Else(name="tuning-here"):
        chosen.append(
            search_hyperparameters(
                raw_data=raw_data, tuning_trials=tuning_trials, **settings
            ).set_display_name("tuning-search")
        )
    return {
        parameter.name: dsl.OneOf(*(task.outputs[parameter.name] for task in chosen))
        for parameter in STUDY.parameters
    }


def run_in_role_images(images: ImageSet) -> None:
    """Run every task of the pipeline being defined in its role's image of ``images``.

    A component names its role by its placeholder image (``components.images``). One sweep,
    so that no step can be missed; the custom job task runs Google's launcher image and is
    left alone. The image is set as ``set_container_image`` sets a plain string, without its
    ``inspect.stack()`` call, which costs a second per compile inside a deep call stack (a
    test, a CLI calling the compiler).
    """
    roles = {PLACEHOLDERS.for_role(role): role for role in Role}
    for task in pipeline_context.Pipeline.get_default_pipeline().tasks.values():
        if task.container_spec is not None and task.container_spec.image in roles:
            task.container_spec.image = images.for_role(roles[task.container_spec.image])


def build_pipeline(
    resources: TrainResources = TrainResources(),
    images: ImageSet = PLACEHOLDERS,
):
    """Define the pipeline with the train step's compute ``resources``, each step in its
    role's image of ``images`` (the serving one: ``serving_image``'s default)."""

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description=(
            "Transfer learning on EfficientNet-Lite for image classification; the model is "
            "registered and deployed only when it passes the gate: accuracy, and the serving "
            "budgets of infra validation (the model served as the endpoint will serve it)."
        ),
    )
    def training_pipeline(
        data_uri: str = CHALLENGE_DATA_URI,
        eval_fraction: float = SOURCE.eval_fraction,
        csv_file_column: str = SOURCE.file_column,
        csv_label_column: str = SOURCE.label_column,
        csv_image_folder: str = SOURCE.image_folder,
        min_image_size: int = VALIDATION.min_image_size,
        max_unusable_share: float = VALIDATION.max_unusable_share,
        backbone: str = TRAINING.backbone,
        image_size: int = PREPROCESS.image_size,
        epochs: int = TRAINING.epochs,
        learning_rate: float = TRAINING.learning_rate,
        fine_tune_epochs: int = TRAINING.fine_tune_epochs,
        fine_tune_learning_rate: float = TRAINING.fine_tune_learning_rate,
        fine_tune_from_block: int = TRAINING.fine_tune_from_block,
        batch_size: int = TRAINING.batch_size,
        dropout: float = TRAINING.dropout,
        validation_fraction: float = PREPROCESS.validation_fraction,
        early_stopping_patience: int = TRAINING.early_stopping_patience,
        label_smoothing: float = TRAINING.label_smoothing,
        brightness_contrast: float = TRAINING.brightness_contrast,
        imbalance_ratio: float = TRAINING.imbalance_ratio,
        seed: int = SEED,
        export_tflite: bool = EXPORT.export_tflite,
        min_accuracy: float = GATE.min_accuracy,
        max_regression: float = GATE.max_regression,
        allow_class_change: bool = GATE.allow_class_change,
        max_latency_p95_ms: float = GATE.max_latency_p95_ms,
        max_model_size_mb: float = GATE.max_model_size_mb,
        max_load_seconds: float = GATE.max_load_seconds,
        model_display_name: str = REGISTRATION.model_display_name,
        endpoint_display_name: str = REGISTRATION.endpoint_display_name,
        serving_image: str = images.serving,
        machine_type: str = SERVING.machine_type,
        min_replicas: int = SERVING.min_replicas,
        max_replicas: int = SERVING.max_replicas,
        serving_accelerator_type: str = SERVING.accelerator_type,
        serving_accelerator_count: int = SERVING.accelerator_count,
        traffic_percentage: int = SERVING.traffic_percentage,
        serving_service_account: str = SERVING.service_account,
        target: str = REGISTRATION.target,
        project: str = REGISTRATION.project,
        location: str = REGISTRATION.location,
        local_state_dir: str = REGISTRATION.local_state_dir,
        beam_pipeline_args: str = PREPROCESS.beam_pipeline_args,
        tuning_trials: int = TUNING.trials,
    ) -> PipelineOutputs:
        """Train an image classifier by transfer learning and deploy it if it is good enough.

        Args:
            data_uri: The images, as gs://bucket/path or a local path: a folder
                train/<class>/<image> (eval/<class>/<image> optional), a Vertex AI image
                classification import file (.csv lines [ML_USE,]GCS_FILE_PATH,LABEL or .jsonl), or
                a .csv table with the columns csv_file_column and csv_label_column. Class index =
                position of the class (display) name in sorted order.
            eval_fraction: Share of each class's training images held out as the eval split
                (stratified, seeded) when the data has no eval split. Allowed: more than 0 and less
                than 1.
            csv_file_column: Column of a label table (.csv) naming each image file; a name
                without an extension matches <name>.<image extension>.
            csv_label_column: Column of a label table (.csv) holding each image's class name.
            csv_image_folder: Folder of a label table's images: a path relative to the .csv
                file's folder, or a gs:// URI; empty: the .csv file's own folder.
            min_image_size: Images smaller than this on a side are skipped as unusable. Allowed: a
                whole number, 1 to 4096.
            max_unusable_share: The run fails when a larger share of the files is unusable (corrupt,
                not images, too small, duplicates, train/eval leaks). Allowed: 0 to 1.
            backbone: ImageNet-trained network the classifier is built on: efficientnet-lite0,
                efficientnet-lite1 or efficientnet-lite2 (larger: slower, more accurate on
                ImageNet; the manual's Benchmarks compare them on the beer photos), or
                mobilenet-v3-small (its weights are downloaded when the step runs: it needs the
                network; tuning draws from the EfficientNet-Lite ones only).
            image_size: Side in pixels that images are resized to before the backbone; 0: the
                backbone's native size (224, 240 and 260 px for Lite0, Lite1 and Lite2, 224 for
                MobileNetV3). Allowed: a whole number, 0, or 32 to 1024.
            epochs: Epochs that train the new classification head on the frozen backbone. Allowed: a
                whole number, 1 to 1000.
            learning_rate: Adam learning rate of the head epochs. Allowed: more than 0, at most 1.
            fine_tune_epochs: Epochs that then fine-tune the top of the backbone (0: head only).
                Allowed: a whole number, 0 to 1000.
            fine_tune_learning_rate: Starting Adam learning rate of fine-tuning, decayed to 0 along
                a cosine. Allowed: more than 0, at most 1.
            fine_tune_from_block: First backbone block that fine-tuning trains; the blocks below
                keep their ImageNet weights (0: the whole backbone; its block count, 16 for Lite0
                and 21 for Lite1 and Lite2: only its last convolution). Batch normalisation always
                stays frozen. Allowed: a whole number, 0 to 21 (at most the backbone's block count).
            batch_size: Images per training step. Allowed: a whole number, 1 to 4096.
            dropout: Dropout rate before the classification head. Allowed: 0 or more, less than 1.
            validation_fraction: Share of each class's training images held out (stratified, seeded)
                as the validation split for early stopping; the eval split is never used. Allowed: 0
                or more, less than 1.
            early_stopping_patience: Epochs without a lower validation loss after which a phase
                stops and keeps its best weights (0: no early stopping). Allowed: a whole number, 0
                to 1000.
            label_smoothing: Label smoothing of the cross-entropy loss (0: none). Allowed: 0 or
                more, less than 1.
            brightness_contrast: Largest random brightness and contrast change of training images,
                as a fraction (0: none); flips, small rotations and zooms always apply. Allowed: 0
                to 1.
            imbalance_ratio: Class weights (inverse frequency) are used when the largest training
                class has more than this many times the images of the smallest. Allowed: at least 1.
            seed: Random seed of the carved eval split, the validation split, shuffling,
                initialisation, augmentation and dropout, for repeatable runs. Allowed: a whole
                number, 0 to 2147483647.
            export_tflite: Also write the model as TFLite for phones and boards: float16 and int8
                (quantized, calibrated on training images), kept with the registered version
                under its artifact URI (tflite/); evaluate scores both on the eval split and the
                report shows their accuracy and size (docs: edge export).
            min_accuracy: Accuracy on the eval split that the model must reach to be deployed.
                Allowed: 0 to 1.
            max_regression: How much lower than the served model's (champion's) accuracy on the same
                eval photos the new model may score and still replace it (0: not worse), counted in
                photos; the exact McNemar test of the difference is reported. Allowed: 0 to 1.
            allow_class_change: Let a new model replace a served one trained on other classes
                (false: it is never deployed over it, and the run says so).
            max_latency_p95_ms: Serving budget: the 95th percentile latency, in milliseconds, of
                a one-image prediction request from one client, measured by the infra
                validation step on the model served as the endpoint will serve it (the serving
                image's server). A slower model is not deployed. Allowed: more than 0.
            max_model_size_mb: Serving budget: the exported model's size in MB (10^6 bytes). A
                larger model is not deployed. Allowed: more than 0.
            max_load_seconds: Serving budget: seconds from the serving container's start to
                its first healthy answer (loading TensorFlow and the model), as infra
                validation measures it. A model slower to start is not deployed. Allowed: more
                than 0.
            model_display_name: Model in the registry that each deployed run adds a version to.
                Empty: named after the data, <data name>-classifier, the data name being the
                last folder of data_uri that is not a generic one (data, images, train...),
                else its bucket (manual: Your data).
            endpoint_display_name: Endpoint that serves the deployed version. Empty:
                <model_display_name>-endpoint.
            serving_image: Prediction image of the registered model on Vertex AI: by default
                the project's serving image (docker/Dockerfile.serving) pushed beside the
                steps' images; "prebuilt" Vertex AI's prebuilt TensorFlow image for the
                training TensorFlow version and the region (its GPU variant with a serving
                accelerator); any other value is an image URI that follows the serving image's
                contract.
            machine_type: Vertex AI machine type of the endpoint's replicas.
            min_replicas: Replicas the endpoint always keeps (autoscaling lower bound). Allowed: a
                whole number, 1 to 1000.
            max_replicas: Replicas the endpoint may scale up to under load. Allowed: a whole number,
                1 to 1000.
            serving_accelerator_type: GPU of each replica on Vertex AI, e.g. NVIDIA_TESLA_T4;
                empty for CPU only.
            serving_accelerator_count: GPUs per replica (0 with no serving accelerator). Allowed: a
                whole number, 0 to 8.
            traffic_percentage: Share of the endpoint's traffic that the new version gets (100: all;
                less: a canary beside the version that served most traffic before, which keeps the
                rest). Every other deployed version is undeployed. Allowed: a whole number, 1 to
                100.
            serving_service_account: Service account the deployed model runs as on Vertex AI;
                empty uses Vertex AI's default one (the deploy step says so in its log).
            target: Where models are registered and served: 'local' (registry and endpoint
                records under local_state_dir) or 'vertex' (Vertex AI Model Registry).
            project: Google Cloud project of the model and endpoint; empty: the pipeline job's.
            location: Region of the model and endpoint; empty: the pipeline job's.
            local_state_dir: Folder of the local model registry and endpoints (target 'local').
            beam_pipeline_args: Empty: the preprocess and features steps do their work
                themselves, streaming, on every core of their machine. Otherwise Apache Beam
                flags that run that work as a Beam pipeline: '--runner=DirectRunner' on the
                step's machine, or '--runner=DataflowRunner --project=P --region=R
                --temp_location=gs://B/tmp --sdk_container_image=<worker image>' on as many
                Dataflow workers as the data needs; the worker image is the pipeline image
                with Beam's /opt/apache/beam/boot added as its entrypoint (the pipeline image
                alone cannot start a worker; manual: Scale and Beam).
            tuning_trials: 0: train with the parameters given. N > 0: first tune the backbone,
                learning_rate, fine_tune_learning_rate and fine_tune_from_block over N trials,
                each trained as the train step trains with the other parameters, and train with
                the best trial's (highest validation accuracy): on Vertex AI a hyperparameter
                tuning job (trials on machines like the train job's, two at once), elsewhere
                one trial after another (manual: Tuning). Allowed: a whole number, 0 to 1000.
        """
        # Every parameter checked first, so that a console run fails in seconds.
        given = dict(locals())
        checked = (
            check_parameters(
                **{name: given[name] for name in check_parameters.component_spec.inputs}
            )
            .set_display_name("parameters")
            .set_caching_options(False)
        )
        # Where models go, settled next: an empty project or location is the job's own; the
        # serving settings are checked here too, not first at the deploy step.
        resolved = resolve_target(
            target=target,
            project=project,
            location=location,
            local_state_dir=local_state_dir,
            job_project=_placeholders.PROJECT_ID_PLACEHOLDER,
            job_location=_placeholders.LOCATION_PLACEHOLDER,
            machine_type=machine_type,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            serving_accelerator_type=serving_accelerator_type,
            serving_accelerator_count=serving_accelerator_count,
            traffic_percentage=traffic_percentage,
            serving_service_account=serving_service_account,
            data_uri=data_uri,
            model_display_name=model_display_name,
            endpoint_display_name=endpoint_display_name,
        ).set_display_name("target")
        resolved.after(checked)
        registry = {
            "target": target,
            "project": resolved.outputs["project"],
            "location": resolved.outputs["location"],
            "local_state_dir": local_state_dir,
        }
        # Never cached: it is how the cache of every later step follows the data.
        csv_columns = {
            "csv_file_column": csv_file_column,
            "csv_label_column": csv_label_column,
            "csv_image_folder": csv_image_folder,
        }
        fingerprint = (
            fingerprint_data(data_uri=data_uri, **csv_columns)
            .set_display_name("fingerprint")
            .set_caching_options(False)
            .after(checked)
        )
        download = download_data(
            data_uri=data_uri,
            data_fingerprint=fingerprint.output,
            eval_fraction=eval_fraction,
            seed=seed,
            **csv_columns,
        ).set_display_name("download")
        validate = validate_data(
            raw_data=download.outputs["raw_data"],
            min_image_size=min_image_size,
            max_unusable_share=max_unusable_share,
        ).set_display_name("validate")
        # The train step's parameters that tuning does not change.
        training = {
            "epochs": epochs,
            "fine_tune_epochs": fine_tune_epochs,
            "batch_size": batch_size,
            "dropout": dropout,
            "label_smoothing": label_smoothing,
            "brightness_contrast": brightness_contrast,
            "early_stopping_patience": early_stopping_patience,
            "imbalance_ratio": imbalance_ratio,
            "seed": seed,
        }
        tuned = _hyperparameters(
            checked,
            tuning_trials,
            validate.outputs["dataset"],
            resources,
            images.gpu,
            given={
                "learning_rate": learning_rate,
                "fine_tune_learning_rate": fine_tune_learning_rate,
                "fine_tune_from_block": fine_tune_from_block,
                "backbone": backbone,
            },
            image_size=image_size,
            validation_fraction=validation_fraction,
            **training,
        )
        preprocess = preprocess_data(
            raw_data=validate.outputs["dataset"],
            image_size=image_size,
            backbone=tuned["backbone"],
            validation_fraction=validation_fraction,
            seed=seed,
            beam_pipeline_args=beam_pipeline_args,
        ).set_display_name("preprocess")
        features = extract_features(
            dataset=preprocess.outputs["dataset"],
            backbone=tuned["backbone"],
            beam_pipeline_args=beam_pipeline_args,
        ).set_display_name("features")
        if resources.accelerator_type and resources.accelerator_count:
            features.set_accelerator_type(resources.accelerator_type).set_accelerator_limit(1)
        train = _train_task(
            resources,
            images.gpu,
            dataset=preprocess.outputs["dataset"],
            features=features.outputs["features"],
            pipeline_root=dsl.PIPELINE_ROOT_PLACEHOLDER,
            export_tflite=export_tflite,
            **tuned,
            **training,
        ).set_display_name("train")
        # Never cached: the champion it compares with can change between runs.
        evaluate = (
            evaluate_model(
                raw_data=validate.outputs["dataset"],
                model=train.outputs["model"],
                min_accuracy=min_accuracy,
                max_regression=max_regression,
                allow_class_change=allow_class_change,
                max_latency_p95_ms=max_latency_p95_ms,
                max_model_size_mb=max_model_size_mb,
                max_load_seconds=max_load_seconds,
                endpoint_display_name=resolved.outputs["endpoint_display_name"],
                **registry,
            )
            .set_display_name("evaluate")
            .set_caching_options(False)
        )
        # The serving image's server on the model, as the endpoint will run it; never cached,
        # as evaluate is not (and its latency is this run's). It fails when the model cannot
        # be served, so such a model never reaches upload.
        infra = (
            infra_validate(
                model=train.outputs["model"],
                raw_data=validate.outputs["dataset"],
                evaluation=evaluate.outputs["model_evaluation"],
                evaluation_report=evaluate.outputs["report"],
                evaluate_deploy=evaluate.outputs["deploy"],
                evaluate_reason=evaluate.outputs["reason"],
                evaluation_summary=evaluate.outputs["summary"],
            )
            .set_display_name("infra-validate")
            .set_caching_options(False)
        )
        # The branch keeps its name; it now also holds infra validation's serving budgets.
        with dsl.If(infra.outputs["deploy"] == True, name="accuracy-gate"):  # noqa: E712
            upload = (
                upload_model(
                    model=train.outputs["model"],
                    model_evaluation=infra.outputs["model_evaluation"],
                    accuracy=evaluate.outputs["accuracy"],
                    champion_accuracy=evaluate.outputs["champion_accuracy"],
                    decision=infra.outputs["reason"],
                    evaluation=infra.outputs["summary"],
                    model_display_name=resolved.outputs["model_display_name"],
                    pipeline_job=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                    serving_image=serving_image,
                    accelerator_type=serving_accelerator_type,
                    **registry,
                )
                .set_display_name("upload")
                .set_caching_options(False)
            )
            deploy = (
                deploy_model(
                    model_version=upload.outputs["Output"],
                    endpoint_display_name=resolved.outputs["endpoint_display_name"],
                    machine_type=machine_type,
                    min_replicas=min_replicas,
                    max_replicas=max_replicas,
                    accelerator_type=serving_accelerator_type,
                    accelerator_count=serving_accelerator_count,
                    traffic_percentage=traffic_percentage,
                    service_account=serving_service_account,
                    **registry,
                )
                .set_display_name("deploy")
                .set_caching_options(False)
            )
        with dsl.Else(name="accuracy-gate-closed"):
            rejected = (
                report_not_deployed(reason=infra.outputs["reason"])
                .set_display_name("not-deployed")
                .set_caching_options(False)
            )
        run_in_role_images(images)
        return PipelineOutputs(
            accuracy=evaluate.outputs["accuracy"],
            champion_accuracy=evaluate.outputs["champion_accuracy"],
            deployed=infra.outputs["deploy"],
            decision=infra.outputs["reason"],
            model_version=dsl.OneOf(upload.outputs["Output"], rejected.output),
            endpoint=dsl.OneOf(deploy.outputs["Output"], rejected.output),
            report=infra.outputs["report"],
            evaluation=infra.outputs["summary"],
        )

    return training_pipeline


training_pipeline = build_pipeline()
