"""Pipeline step: copy the images from ``gs://`` or a folder into a Dataset artifact."""

from kfp import dsl

from components import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def download_data(data_uri: str, data_fingerprint: str, raw_data: dsl.Output[dsl.Dataset]) -> None:
    """Copy ``<data_uri>/{train,eval}/<class>/<image>`` after checking the layout, by URI: a
    bucket-to-bucket copy inside Cloud Storage on Vertex AI, not file by file through ``/gcs``.

    ``data_fingerprint`` (of the images under ``data_uri``) is not read here: as an input it
    makes the step's cache key, and so every later step's, follow the data, not just its URI.
    """
    from components.lib.data.layout import download_dataset, redact_uri

    layout = download_dataset(data_uri, raw_data.uri)
    raw_data.metadata.update(
        {
            "source": redact_uri(data_uri),
            "fingerprint": data_fingerprint,
            "class_names": layout.class_names,
            "counts": layout.counts(),
        }
    )
