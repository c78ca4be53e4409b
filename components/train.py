"""Pipeline step: transfer learning on an ImageNet backbone, exported as a serving SavedModel."""

from kfp import dsl

from components.images import PLACEHOLDERS


@dsl.component(base_image=PLACEHOLDERS.gpu, install_kfp_package=False)
def train_model(
    dataset: dsl.Input[dsl.Dataset],
    features: dsl.Input[dsl.Dataset],
    pipeline_root: str,
    backbone: str,
    epochs: int,
    learning_rate: float,
    fine_tune_epochs: int,
    fine_tune_learning_rate: float,
    fine_tune_from_block: int,
    batch_size: int,
    dropout: float,
    label_smoothing: float,
    brightness_contrast: float,
    early_stopping_patience: int,
    imbalance_ratio: float,
    seed: int,
    export_tflite: bool,
    model: dsl.Output[dsl.Model],
    training_metrics: dsl.Output[dsl.Metrics],
) -> None:
    """Train the head on the backbone ``features``, then fine-tune the backbone's top; export the
    classifier with its ``bytes`` -> CLASSES/PROBABILITIES signature. The per-epoch history goes
    in the model's metadata.

    Run as a Vertex AI custom job on several machines, every worker trains and only the chief
    writes the model; all report the same metadata (they hold the same weights). Checkpoints
    go under ``pipeline_root`` and are removed once the model is written. TensorBoard logs go
    to ``<model>/tensorboard/`` and, when Vertex AI sets ``AIP_TENSORBOARD_LOG_DIR`` (a custom
    job with a TensorBoard: ``compile --tensorboard``), there too. With ``export_tflite``, the
    float16 and int8 TFLite models go to ``<model>/tflite/`` (``modelling.edge``). The drift
    monitor's reference (training embeddings, validation confidences) goes to
    ``<model>/monitoring/reference.npz`` (``monitoring.reference``).
    """
    import dataclasses
    import shutil

    from components.lib.artifacts import write_metadata_file
    from components.lib.data.records import load_preprocessed
    from components.lib.modelling.edge import export_edge_models
    from components.lib.modelling.features import check_features
    from components.lib.modelling.model import (
        TrainingConfig,
        export_serving_model,
        train_classifier,
    )
    from components.lib.modelling.reference import build_reference
    from components.lib.modelling.tensorboard import log_dirs
    from components.lib.modelling.training import checkpoint_directory
    from components.lib.monitoring.reference import write_reference

    data = load_preprocessed(dataset.path)
    config = TrainingConfig(
        backbone=backbone,
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
    check_features(features.path, data.image_size, backbone)
    checkpoint_dir = checkpoint_directory(
        pipeline_root, dataset=dataset.uri, features=features.uri, config=dataclasses.asdict(config)
    )
    result = train_classifier(
        data, config, features.path, checkpoint_dir, log_dirs=log_dirs(model.path)
    )
    history = result.history
    edge_models = []
    if result.chief:
        export_serving_model(
            result.model,
            data.class_names,
            data.image_size,
            model.path,
            result.temperature,
            result.calibration,
        )
        write_reference(model.path, build_reference(result.model, data, result.temperature))
        if export_tflite:
            edge_models = export_edge_models(result.model, data, model.path, result.temperature)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    model.metadata.update(
        {
            "framework": "tensorflow",
            "backbone": backbone,
            "image_size": data.image_size,
            "class_names": data.class_names,
            "training_config": dataclasses.asdict(config),
            "history": history,
            "replicas": result.replicas,
            "mixed_precision": result.mixed_precision,
            "calibration": result.calibration,
            "tflite": [dataclasses.asdict(edge) for edge in edge_models],
        }
    )
    for name, values in history.items():
        training_metrics.log_metric(f"final_{name}", round(values[-1], 4))
    write_metadata_file(training_metrics)
