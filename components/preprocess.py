"""Pipeline step: decode and resize every image into sharded TFRecords with a class map."""

from kfp import dsl

from components.images import PLACEHOLDERS


@dsl.component(base_image=PLACEHOLDERS.cpu, install_kfp_package=False)
def preprocess_data(
    raw_data: dsl.Input[dsl.Dataset],
    image_size: int,
    backbone: str,
    validation_fraction: float,
    seed: int,
    beam_pipeline_args: str,
    dataset: dsl.Output[dsl.Dataset],
) -> None:
    """Write ``{train,val,eval}-*.tfrecord``, ``class_map.json`` and ``stats.json``; ``val`` is
    carved from the training images (stratified, seeded) for early stopping. Images are resized
    to ``image_size``, or with 0 to the ``backbone``'s native size. Reads and writes the
    artifacts by URI (bulk gcsfs requests on Vertex AI, not the ``/gcs`` mount file by file);
    with ``beam_pipeline_args``, the shards are written by Apache Beam workers."""
    from components.lib.data.records import preprocess_dataset
    from components.lib.modelling.variants import input_size

    size = input_size(backbone, image_size)
    result = preprocess_dataset(
        raw_data.uri,
        dataset.uri,
        size,
        seed=seed,
        validation_fraction=validation_fraction,
        beam_args=beam_pipeline_args,
    )
    dataset.metadata.update(
        {"image_size": size, "class_names": result.class_names, "counts": result.counts}
    )
