"""The model's and endpoint's display names when a run is not given them: named after the data,
so that a run on a folder of mugs registers ``mugs-classifier`` and serves it on
``mugs-classifier-endpoint``. The rule, in one place (the manual's "Your data" states it):

- the data's name is the last folder of ``data_uri`` (a label CSV: the file's name without
  its suffix) that is not a generic one (``data``, ``images``, ``train``...), else its bucket;
- lowercase letters, digits and dashes, at most ``DATA_NAME_LENGTH`` characters;
- the model is ``<data name>-classifier``, the endpoint ``<model>-endpoint``; a name given for
  either wins, and a given model name also names the endpoint.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from urllib.parse import urlsplit

from components.lib.targets.base import slug

GENERIC_FOLDERS = frozenset(
    {
        "data", "dataset", "datasets", "image", "images", "imgs", "photos", "pictures",
        "raw", "input", "inputs", "train", "training", "labels", "gcs",
    }
)  # fmt: skip
"""Folder names that say nothing about what the images show: the name comes from above them."""

DATA_NAME_LENGTH = 43
"""So that ``<name>-classifier-endpoint`` fits a 63-character resource id."""

FALLBACK_DATA_NAME = "image"
"""When no part of the URI names the data (``/data``)."""

MODEL_SUFFIX = "-classifier"
ENDPOINT_SUFFIX = "-endpoint"


def data_name(data_uri: str) -> str:
    """The data's name by the rule above: ``gs://acme/photos/mugs`` -> ``mugs``,
    ``gs://acme-mugs/data`` -> ``acme-mugs``, ``/home/me/mugs.csv`` -> ``mugs``. A URI's query
    (a signed URL's signature) never reaches the name."""
    uri = urlsplit(data_uri.strip())
    path = f"{uri.netloc}/{uri.path}" if uri.scheme and uri.netloc else data_uri.strip()
    parts = [part for part in PurePosixPath(path).parts if part not in ("/", ".", "..")]
    if parts and "." in parts[-1]:
        parts[-1] = PurePosixPath(parts[-1]).stem
    for part in reversed(parts):
        name = slug(part)
        if name and name not in GENERIC_FOLDERS:
            if len(name) > DATA_NAME_LENGTH:
                name = name[:DATA_NAME_LENGTH].rsplit("-", 1)[0] or name[:DATA_NAME_LENGTH]
            return name.strip("-")
    return FALLBACK_DATA_NAME


def display_names(
    data_uri: str, model_display_name: str = "", endpoint_display_name: str = ""
) -> tuple[str, str]:
    """The model's and the endpoint's display names: those given, else named after the data."""
    model = model_display_name.strip() or f"{data_name(data_uri)}{MODEL_SUFFIX}"
    endpoint = endpoint_display_name.strip() or f"{model}{ENDPOINT_SUFFIX}"
    return model, endpoint
