"""The storage seam: how a URI (a local folder or ``gs://bucket/path``) becomes a path or bytes.

Every read of an artifact or a model by URI goes through here, so the ``gs://`` rule lives in one
place. On Vertex AI a ``gs://bucket/x`` artifact is also at ``/gcs/bucket/x`` (Cloud Storage FUSE);
``IMAGE_CLASSIFIER_GCS_MOUNT_ROOT`` points that root elsewhere (a test's local mirror). Where no
mount holds the object (a serving container given ``AIP_STORAGE_URI``, a laptop), ``local_copy``
downloads it with gcsfs instead. Listing and bulk copies use fsspec, which picks gcsfs for ``gs://``.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tempfile
import threading
import urllib.parse
import urllib.request
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import fsspec
from fsspec.core import url_to_fs

GCS_SCHEME = "gs://"
GCS_MOUNT_ROOT_ENV = "IMAGE_CLASSIFIER_GCS_MOUNT_ROOT"
DEFAULT_GCS_MOUNT_ROOT = "/gcs"

# gcsfs 2026.x otherwise calls the Storage Control gRPC API first, which hangs against any
# endpoint but Google's own (the GCS emulator among them).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>\\]+")


def redact_uri(uri: str) -> str:
    """``uri`` without user info, query string or fragment, where signed URLs carry secrets
    (``user:password@``, ``X-Goog-Signature=``, ``sig=``...). The one redaction rule: every
    writer of a URI that a person gave (logs, summaries, metadata, reports) applies it."""
    parts = urllib.parse.urlsplit(uri)
    if not parts.scheme or not (parts.query or parts.fragment or "@" in parts.netloc):
        return uri
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", "")) + "?<redacted>"


def redact_text(text: str) -> str:
    """``text`` with ``redact_uri`` applied to every URI in it: for writers of free text (a
    run's log, a step's output) that cannot know where a URI sits."""
    return _URI_IN_TEXT.sub(lambda match: redact_uri(match.group()), text)


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


PROBE_TIMEOUT_S = 10.0
"""How long a service's address may take to resolve, and then to accept a connection."""
GCS_HOST = "storage.googleapis.com"


class StorageSetupError(Exception):
    """Cloud Storage cannot be used from here (credentials, network); the message says why."""


def check_credentials_file() -> bool:
    """Whether there is a key file that ``google.auth.default`` reads first (the one named by
    GOOGLE_APPLICATION_CREDENTIALS, else gcloud's application default credentials); it
    is loaded, without the network. StorageSetupError, naming the file and the reason, when it
    cannot be used: gcsfs would otherwise fall back to anonymous access and report every
    object as missing."""
    import google.auth
    from google.auth import _cloud_sdk
    from google.auth import exceptions as auth_exceptions

    explicit = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    path = explicit or _cloud_sdk.get_application_default_credentials_path()
    if not (explicit or os.path.exists(path)):
        return False
    source = "GOOGLE_APPLICATION_CREDENTIALS" if explicit else "gcloud's default credentials"
    try:
        with warnings.catch_warnings():  # it warns against loading files one did not make
            warnings.simplefilter("ignore", DeprecationWarning)
            google.auth.load_credentials_from_file(path)
    except (auth_exceptions.DefaultCredentialsError, OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise StorageSetupError(
            f"the credentials file {path} ({source}) cannot be used: {reason}"
        ) from None
    return True


def reach_problem(
    service: str, host: str, port: int, timeout_s: float = PROBE_TIMEOUT_S
) -> str | None:
    """None when ``host`` resolves and accepts a TCP connection (or the HTTPS proxy that would
    carry the calls does), each within ``timeout_s``; else what could not be reached and why.
    Seconds, where a client's own retries take minutes to give up."""
    proxy = urllib.request.getproxies().get("https")
    if proxy and not urllib.request.proxy_bypass(host):
        parsed = urllib.request.urlparse(proxy if "://" in proxy else f"http://{proxy}")
        service, host, port = f"the HTTPS proxy for {service}", parsed.hostname, parsed.port or 80
    outcome: list[str | None] = []
    probe = threading.Thread(
        target=lambda: outcome.append(_connect_problem(host, port, timeout_s)), daemon=True
    )
    probe.start()
    probe.join(2 * timeout_s + 1)
    problem = outcome[0] if outcome else f"no answer from DNS within {2 * timeout_s:.0f} s"
    return f"cannot reach {service} at {host}:{port}: {problem}" if problem else None


def _connect_problem(host: str, port: int, timeout_s: float) -> str | None:
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        return (
            f"the name does not resolve (DNS: {error.strerror}); check the network connection "
            "and the address"
        )
    problem = "no address"
    for family, kind, protocol, _, address in addresses:
        try:
            with socket.socket(family, kind, protocol) as connection:
                connection.settimeout(timeout_s)
                connection.connect(address)
            return None
        except TimeoutError:
            problem = f"no answer within {timeout_s:.0f} s"
        except OSError as error:
            problem = error.strerror or str(error)
    return f"{problem}; check the network connection, proxy and firewall"


def gcs_endpoint() -> tuple[str, int]:
    """(host, port) of the Cloud Storage API that gcsfs calls: the emulator at
    STORAGE_EMULATOR_HOST, or Google's."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
    if emulator in ("", "default"):
        return GCS_HOST, 443
    parts = urllib.parse.urlsplit(emulator if "://" in emulator else f"http://{emulator}")
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def check_gcs() -> None:
    """Before a ``gs://`` URI is read: a key file that is there can be used, and Cloud Storage
    answers. StorageSetupError with the cause, in seconds, instead of gcsfs's minutes of
    retries ending in "does not exist"."""
    check_credentials_file()
    if problem := reach_problem("Cloud Storage", *gcs_endpoint()):
        raise StorageSetupError(problem)


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec file system of ``uri`` (gcsfs for ``gs://``) and the path within it."""
    return url_to_fs(uri)


READ_THREADS = 16


def read_files(fs: fsspec.AbstractFileSystem, paths: Sequence[str]) -> list[bytes | OSError]:
    """The bytes of every path of ``fs``, in order, read concurrently (on gcsfs, READ_THREADS
    requests in flight); a file that cannot be read gives its error instead.

    One ``cat_file`` per path, not ``fs.cat(paths)``, which would take a name such as
    ``photo[1].jpg`` for a glob pattern.
    """

    def read(path: str) -> bytes | OSError:
        try:
            return fs.cat_file(path)
        except OSError as error:
            return error

    with ThreadPoolExecutor(READ_THREADS) as pool:
        return list(pool.map(read, paths))


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
    root = cache_root or os.path.join(tempfile.gettempdir(), "image-classifier-storage-cache")
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
