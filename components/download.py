"""Pipeline step: read ``data_uri`` (a folder or an import file, ``gs://`` or local) and copy its
images into a Dataset artifact in the folder layout."""

from kfp import dsl

from components.images import PLACEHOLDERS


@dsl.component(base_image=PLACEHOLDERS.light, install_kfp_package=False)
def download_data(
    data_uri: str,
    data_fingerprint: str,
    eval_fraction: float,
    seed: int,
    csv_file_column: str,
    csv_label_column: str,
    csv_image_folder: str,
    raw_data: dsl.Output[dsl.Dataset],
) -> None:
    """Copy the images as ``{train,eval}/<class>/<image>`` after checking the source; an eval
    split is carved from train when the source has none; skipped rows go to validation.

    ``data_fingerprint`` (of the images ``data_uri`` names) is not read here: as an input it
    makes the step's cache key, and so every later step's, follow the data, not just its URI.
    """
    from components.lib.data.sources import (
        SourceOptions,
        download_dataset,
        read_source_description,
    )
    from components.lib.storage import redact_uri

    options = SourceOptions(
        eval_fraction=eval_fraction,
        seed=seed,
        file_column=csv_file_column,
        label_column=csv_label_column,
        image_folder=csv_image_folder,
    )
    layout = download_dataset(data_uri, raw_data.uri, options, data_fingerprint)
    source = read_source_description(raw_data.uri)
    raw_data.metadata.update(
        {
            "source": redact_uri(data_uri),
            "source_kind": source["kind"],
            "eval_split": source["eval_split"],
            "fingerprint": data_fingerprint,
            "class_names": layout.class_names,
            "counts": layout.counts(),
        }
    )
