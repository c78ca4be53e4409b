"""Pipeline step: transfer learning on EfficientNet-Lite0, exported as a serving SavedModel."""

from kfp import dsl

from components import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def train_model(
    dataset: dsl.Input[dsl.Dataset],
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
    model: dsl.Output[dsl.Model],
    training_metrics: dsl.Output[dsl.Metrics],
) -> None:
    """Train the head, then fine-tune the backbone's top; export the classifier with its ``bytes``
    -> CLASSES/PROBABILITIES signature. The per-epoch history goes in the model's metadata."""
    import dataclasses

    from components.lib.artifacts import write_metadata_file
    from components.lib.model import TrainingConfig, export_serving_model, train_classifier
    from components.lib.records import load_preprocessed

    data = load_preprocessed(dataset.path)
    config = TrainingConfig(
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
    classifier, history = train_classifier(data, config)
    export_serving_model(classifier, data.class_names, data.image_size, model.path)
    model.metadata.update(
        {
            "framework": "tensorflow",
            "backbone": "efficientnet_lite0",
            "image_size": data.image_size,
            "class_names": data.class_names,
            "training_config": dataclasses.asdict(config),
            "history": history,
        }
    )
    for name, values in history.items():
        training_metrics.log_metric(f"final_{name}", round(values[-1], 4))
    write_metadata_file(training_metrics)
