"""Pipeline step: check every image, skip the unusable ones, normalise the rest, report."""

from kfp import dsl

from components.images import PLACEHOLDERS


@dsl.component(base_image=PLACEHOLDERS.light, install_kfp_package=False)
def validate_data(
    raw_data: dsl.Input[dsl.Dataset],
    min_image_size: int,
    max_unusable_share: float,
    dataset: dsl.Output[dsl.Dataset],
    report: dsl.Output[dsl.Markdown],
) -> None:
    """Fails with the list of bad files when more than ``max_unusable_share`` is unusable. Reads
    and writes the images by URI, many requests at once (not file by file through ``/gcs``)."""
    from components.lib.data.validation import validate_dataset

    result = validate_dataset(
        raw_data.uri, dataset.uri, report.path, min_image_size, max_unusable_share
    )
    dataset.metadata.update({"counts": result.counts, "unusable": result.unusable})
