"""Pipeline step: fingerprint the images that ``data_uri`` names, so that caching follows the data.

Never cached, and cheap (listings, and an import file's own text; no image read). Its output is
an input of the download step, so download and everything after it are cached exactly while the
data is unchanged: added, removed or replaced images (or a changed import file) retrain, the same
images reuse the cached steps.
"""

from kfp import dsl

from components.images import PLACEHOLDERS


@dsl.component(base_image=PLACEHOLDERS.light, install_kfp_package=False)
def fingerprint_data(
    data_uri: str, csv_file_column: str, csv_label_column: str, csv_image_folder: str
) -> str:
    """Returns ``sha256:<hex>`` of the image paths, sizes and content ids that ``data_uri`` (a
    folder or an import file, read as the download step reads it) names."""
    import logging

    from components.lib.data.sources import SourceOptions, fingerprint_source
    from components.lib.storage import redact_uri

    options = SourceOptions(
        file_column=csv_file_column, label_column=csv_label_column, image_folder=csv_image_folder
    )
    digest, images = fingerprint_source(data_uri, options)
    logging.getLogger(__name__).info(
        "%d images under %s: %s", images, redact_uri(data_uri), digest[:19]
    )
    return digest
