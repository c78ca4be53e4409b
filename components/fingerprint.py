"""Pipeline step: fingerprint the images under ``data_uri``, so that caching follows the data.

Never cached, and cheap (one listing, no file read). Its output is an input of the download
step, so download and everything after it are cached exactly while the images are unchanged:
added, removed or replaced images retrain, the same images reuse the cached steps.
"""

from kfp import dsl

from components import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def fingerprint_data(data_uri: str) -> str:
    """Returns ``sha256:<hex>`` of the image paths, sizes and content ids under ``data_uri``."""
    import logging

    from components.lib.data.layout import fingerprint_data as fingerprint
    from components.lib.data.layout import redact_uri

    digest, images = fingerprint(data_uri)
    logging.getLogger(__name__).info(
        "%d images under %s: %s", images, redact_uri(data_uri), digest[:19]
    )
    return digest
