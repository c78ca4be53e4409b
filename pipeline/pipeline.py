"""The training pipeline: download -> preprocess -> train -> evaluate -> [gate] -> upload -> deploy.

Its parameters, with their defaults and descriptions (shown in the Vertex Pipelines console), are
the one place where a run is configured. Compute resources of the train step are set at compile
time (KFP compiles them into the spec), through ``TrainResources``.
"""

from dataclasses import dataclass
from typing import NamedTuple

from kfp import dsl

from components.deploy import deploy_model
from components.download import download_data
from components.evaluate import evaluate_model
from components.gate import report_not_deployed
from components.preprocess import preprocess_data
from components.train import train_model
from components.upload import upload_model

PIPELINE_NAME = "beer-classifier-training"
CHALLENGE_DATA_URI = "gs://ml6_junior_ml_engineer_challenge_cv_beer_data/data"


@dataclass(frozen=True)
class TrainResources:
    """What the train step asks of Vertex AI: one T4 GPU by default."""

    accelerator_type: str = "NVIDIA_TESLA_T4"
    accelerator_count: int = 1
    cpu_limit: str = "8"
    memory_limit: str = "30G"


class PipelineOutputs(NamedTuple):
    accuracy: float
    champion_accuracy: float
    deployed: bool
    decision: str
    model_version: str
    endpoint: str
    report: dsl.HTML


def build_pipeline(resources: TrainResources = TrainResources()):
    """Define the pipeline with the train step's compute ``resources``."""

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description=(
            "Transfer learning on EfficientNet-Lite0 for image classification; the model is "
            "registered and deployed only when it passes the accuracy gate."
        ),
    )
    def training_pipeline(
        data_uri: str = CHALLENGE_DATA_URI,
        image_size: int = 224,
        epochs: int = 10,
        learning_rate: float = 0.01,
        fine_tune_epochs: int = 10,
        fine_tune_learning_rate: float = 0.0003,
        fine_tune_from_block: int = 4,
        batch_size: int = 32,
        dropout: float = 0.2,
        validation_fraction: float = 0.1,
        early_stopping_patience: int = 3,
        label_smoothing: float = 0.1,
        brightness_contrast: float = 0.2,
        imbalance_ratio: float = 1.5,
        seed: int = 42,
        min_accuracy: float = 0.8,
        max_regression: float = 0.0,
        model_display_name: str = "beer-classifier",
        endpoint_display_name: str = "beer-classifier-endpoint",
        target: str = "vertex",
        project: str = "",
        location: str = "europe-west1",
        local_state_dir: str = "",
    ) -> PipelineOutputs:
        """Train an image classifier by transfer learning and deploy it if it is good enough.

        Args:
            data_uri: Images in the layout {train,eval}/<class>/<image>, as gs://bucket/path or a
                local folder. Class index = position of the class folder in sorted order.
            image_size: Side in pixels that images are resized to before the backbone.
            epochs: Epochs that train the new classification head on the frozen backbone.
            learning_rate: Adam learning rate of the head epochs.
            fine_tune_epochs: Epochs that then fine-tune the top of the backbone (0: head only).
            fine_tune_learning_rate: Starting Adam learning rate of fine-tuning, decayed to 0
                along a cosine.
            fine_tune_from_block: First EfficientNet-Lite0 block (0-16) that fine-tuning trains;
                the blocks below keep their ImageNet weights (0: the whole backbone, 16: only its
                last convolution). Batch normalisation always stays frozen.
            batch_size: Images per training step.
            dropout: Dropout rate before the classification head.
            validation_fraction: Share of each class's training images held out (stratified,
                seeded) as the validation split for early stopping; the eval split is never used.
            early_stopping_patience: Epochs without a lower validation loss after which a phase
                stops and keeps its best weights (0: no early stopping).
            label_smoothing: Label smoothing of the cross-entropy loss (0: none).
            brightness_contrast: Largest random brightness and contrast change of training
                images, as a fraction (0: none); flips, small rotations and zooms always apply.
            imbalance_ratio: Class weights (inverse frequency) are used when the largest training
                class has more than this many times the images of the smallest.
            seed: Random seed of the validation split, shuffling, initialisation, augmentation
                and dropout, for repeatable runs.
            min_accuracy: Accuracy on the eval split that the model must reach to be deployed.
            max_regression: How much lower than the served model's (champion's) accuracy on the
                same eval split the new model may score and still replace it (0: not worse).
            model_display_name: Model in the registry that each deployed run adds a version to.
            endpoint_display_name: Endpoint that serves the deployed version.
            target: Where models are registered and served: 'local' (registry and endpoint
                records under local_state_dir) or 'vertex' (Vertex AI Model Registry).
            project: Google Cloud project of the model and endpoint resource names.
            location: Region of the model and endpoint.
            local_state_dir: Folder of the local model registry and endpoints (target 'local').
        """
        registry = {
            "target": target,
            "project": project,
            "location": location,
            "local_state_dir": local_state_dir,
        }
        download = download_data(data_uri=data_uri).set_display_name("download")
        preprocess = preprocess_data(
            raw_data=download.outputs["raw_data"],
            image_size=image_size,
            validation_fraction=validation_fraction,
            seed=seed,
        ).set_display_name("preprocess")
        train = (
            train_model(
                dataset=preprocess.outputs["dataset"],
                epochs=epochs,
                learning_rate=learning_rate,
                fine_tune_epochs=fine_tune_epochs,
                fine_tune_learning_rate=fine_tune_learning_rate,
                fine_tune_from_block=fine_tune_from_block,
                batch_size=batch_size,
                dropout=dropout,
                label_smoothing=label_smoothing,
                brightness_contrast=brightness_contrast,
                early_stopping_patience=early_stopping_patience,
                imbalance_ratio=imbalance_ratio,
                seed=seed,
            )
            .set_display_name("train")
            .set_accelerator_type(resources.accelerator_type)
            .set_accelerator_limit(resources.accelerator_count)
            .set_cpu_limit(resources.cpu_limit)
            .set_memory_limit(resources.memory_limit)
        )
        # Never cached: the champion it compares with can change between runs.
        evaluate = (
            evaluate_model(
                raw_data=download.outputs["raw_data"],
                model=train.outputs["model"],
                min_accuracy=min_accuracy,
                max_regression=max_regression,
                endpoint_display_name=endpoint_display_name,
                **registry,
            )
            .set_display_name("evaluate")
            .set_caching_options(False)
        )
        with dsl.If(evaluate.outputs["deploy"] == True, name="accuracy-gate"):  # noqa: E712
            upload = (
                upload_model(
                    model=train.outputs["model"],
                    accuracy=evaluate.outputs["accuracy"],
                    champion_accuracy=evaluate.outputs["champion_accuracy"],
                    decision=evaluate.outputs["reason"],
                    model_display_name=model_display_name,
                    pipeline_job=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                    **registry,
                )
                .set_display_name("upload")
                .set_caching_options(False)
            )
            deploy = (
                deploy_model(
                    model_version=upload.output,
                    endpoint_display_name=endpoint_display_name,
                    **registry,
                )
                .set_display_name("deploy")
                .set_caching_options(False)
            )
        with dsl.Else(name="accuracy-gate-closed"):
            rejected = (
                report_not_deployed(reason=evaluate.outputs["reason"])
                .set_display_name("not-deployed")
                .set_caching_options(False)
            )
        return PipelineOutputs(
            accuracy=evaluate.outputs["accuracy"],
            champion_accuracy=evaluate.outputs["champion_accuracy"],
            deployed=evaluate.outputs["deploy"],
            decision=evaluate.outputs["reason"],
            model_version=dsl.OneOf(upload.output, rejected.output),
            endpoint=dsl.OneOf(deploy.output, rejected.output),
            report=evaluate.outputs["report"],
        )

    return training_pipeline


training_pipeline = build_pipeline()
