"""The storage seam: how a URI (a local folder or ``gs://bucket/path``) becomes a path or bytes.

Every read of an artifact or a model by URI goes through here, so the ``gs://`` rule lives in one
place. On Vertex AI a ``gs://bucket/x`` artifact is also at ``/gcs/bucket/x`` (Cloud Storage FUSE);
``BEER_GCS_MOUNT_ROOT`` points that root elsewhere (a test's local mirror). Where no mount holds
the object (a serving container given ``AIP_STORAGE_URI``, a laptop), ``local_copy`` downloads it
with gcsfs instead. Listing and bulk copies use fsspec, which picks gcsfs for ``gs://``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile

import fsspec
from fsspec.core import url_to_fs

GCS_SCHEME = "gs://"
GCS_MOUNT_ROOT_ENV = "BEER_GCS_MOUNT_ROOT"
DEFAULT_GCS_MOUNT_ROOT = "/gcs"

# gcsfs 2026.x otherwise calls the Storage Control gRPC API first, which hangs against any
# endpoint but Google's own (the GCS emulator among them).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def is_gcs(uri: str) -> bool:
    return uri.startswith(GCS_SCHEME)


def normalized_uri(uri: str) -> str:
    """One spelling per location, so that two URIs of the same artifact compare equal:
    ``gs://`` without a trailing slash (a path under the bucket mount too), a local path
    absolute."""
    uri = gcs_uri(uri)
    return uri.rstrip("/") if is_gcs(uri) else os.path.abspath(uri)


def gcs_mount_root() -> str:
    """The folder where ``gs://`` buckets are mounted: ``/gcs`` on Vertex AI."""
    return os.environ.get(GCS_MOUNT_ROOT_ENV, DEFAULT_GCS_MOUNT_ROOT)


def mounted_path(uri: str) -> str:
    """``gs://bucket/x`` -> ``<mount root>/bucket/x``; any other path unchanged.

    Use it for what a step writes (checkpoints under the pipeline root), where the mount is
    the way to write on Vertex AI.
    """
    if not is_gcs(uri):
        return uri
    return os.path.join(gcs_mount_root(), uri[len(GCS_SCHEME) :])


def gcs_uri(path: str) -> str:
    """The ``gs://`` URI of a path under the mount root (what ``mounted_path`` maps back from);
    a ``gs://`` URI or any other path unchanged.

    A step that ran where the bucket is mounted (kfp.local with its pipeline root on the mount)
    names its artifacts by the local path; the cloud knows them by this URI.
    """
    root = os.path.join(os.path.abspath(gcs_mount_root()), "")
    if is_gcs(path) or not os.path.abspath(path).startswith(root):
        return path
    return GCS_SCHEME + os.path.abspath(path)[len(root) :]


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec file system of ``uri`` (gcsfs for ``gs://``) and the path within it."""
    return url_to_fs(uri)


def local_copy(uri: str, cache_root: str | None = None) -> str:
    """A local folder or file holding what ``uri`` names, for readers that need a path
    (``tf.saved_model.load``, ``open``).

    A local path is returned as it is; a ``gs://`` URI is read through the mount when the mount
    holds it, and otherwise downloaded with gcsfs into ``cache_root`` (a temporary folder by
    default). The copy is keyed by the objects' names, sizes and generations, so objects
    replaced under the same URI are downloaded again, never served stale. Raises
    FileNotFoundError naming the URI when neither has it.
    """
    if not is_gcs(uri):
        return uri
    mounted = mounted_path(uri)
    if os.path.exists(mounted):
        return mounted
    fs, path = filesystem(uri)
    objects = fs.find(path, detail=True) if fs.exists(path) else {}
    if not objects:
        raise FileNotFoundError(
            f"{uri} does not exist (looked under {gcs_mount_root()} and in GCS)"
        )
    listing = sorted(
        (name, info.get("size"), info.get("generation") or info.get("md5Hash") or info.get("etag"))
        for name, info in objects.items()
    )
    key = hashlib.sha256(repr((uri, listing)).encode()).hexdigest()[:16]
    root = cache_root or os.path.join(tempfile.gettempdir(), "beer-storage-cache")
    destination = os.path.join(root, key, os.path.basename(path.rstrip("/")))
    if not os.path.exists(destination):
        partial = f"{destination}.partial-{os.getpid()}"
        if fs.isdir(path):
            fs.get(path.rstrip("/") + "/", partial, recursive=True)
        else:
            os.makedirs(os.path.dirname(partial), exist_ok=True)
            fs.get(path, partial)
        os.replace(partial, destination)
    return destination
