"""Pipeline step: the frozen backbone's features of the training images, computed once.

Cached by KFP like any step, so a retrain that changes only head hyperparameters reuses them.
"""

from kfp import dsl

from components.images import PLACEHOLDERS


@dsl.component(base_image=PLACEHOLDERS.gpu, install_kfp_package=False)
def extract_features(
    dataset: dsl.Input[dsl.Dataset],
    backbone: str,
    beam_pipeline_args: str,
    features: dsl.Output[dsl.Dataset],
) -> None:
    """Write the ImageNet ``backbone``'s (EfficientNet-Lite) features of the train and val
    splits, one file per shard of images; with ``beam_pipeline_args``, on Apache Beam workers."""
    from components.lib.data.records import load_preprocessed
    from components.lib.modelling.features import extract_features as extract

    data = load_preprocessed(dataset.path)
    counts = extract(
        data,
        features.uri,
        backbone=backbone,
        beam_args=beam_pipeline_args,
        records_uri=dataset.uri,
    )
    features.metadata.update(
        {"backbone": backbone, "image_size": data.image_size, "counts": counts}
    )
