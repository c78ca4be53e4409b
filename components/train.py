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
    batch_size: int,
    dropout: float,
    seed: int,
    model: dsl.Output[dsl.Model],
    training_metrics: dsl.Output[dsl.Metrics],
) -> None:
    """Train the head; export it with its ``bytes`` -> CLASSES/PROBABILITIES signature."""
    from components.lib.artifacts import write_metadata_file
    from components.lib.model import TrainingConfig, export_serving_model, train_classifier
    from components.lib.records import load_preprocessed

    data = load_preprocessed(dataset.path)
    config = TrainingConfig(
        epochs=epochs,
        learning_rate=learning_rate,
        fine_tune_epochs=fine_tune_epochs,
        fine_tune_learning_rate=fine_tune_learning_rate,
        batch_size=batch_size,
        dropout=dropout,
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
            "history": history,
        }
    )
    for name, values in history.items():
        training_metrics.log_metric(f"final_{name}", round(values[-1], 4))
    write_metadata_file(training_metrics)
