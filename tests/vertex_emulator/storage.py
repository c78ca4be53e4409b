"""Cloud Storage as the emulated Vertex AI sees it: the GCS emulator, and a stand-in FUSE mount.

``CloudStorage`` reads the GCS emulator (``gcp-storage-emulator``) with google-cloud-storage.
``MountMirror`` plays Cloud Storage FUSE for a local run: kfp.local writes the steps' outputs under
``<mount root>/<bucket>/...`` (the ``/gcs/`` convention, ``IMAGE_CLASSIFIER_GCS_MOUNT_ROOT``), and
the mirror uploads what was written to the GCS emulator before Vertex AI reads it, as gcsfuse
uploads a file when it is closed. Only the prefix being read is synchronised.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

GCS = "gs://"


def split_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ("bucket", "a/b")."""
    if not uri.startswith(GCS):
        raise ValueError(f"{uri!r} is not a gs:// URI")
    bucket, _, path = uri[len(GCS) :].partition("/")
    return bucket, path.strip("/")


class MountMirror:
    """A folder that stands in for a Cloud Storage FUSE mount: ``<root>/<bucket>/<object>``."""

    def __init__(self, root: str, client: storage.Client) -> None:
        self.root = Path(root)
        self._client = client
        self._uploaded: dict[Path, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def flush(self, uri: str) -> int:
        """Upload what was written under the folder ``uri`` since the last flush (a count)."""
        bucket_name, prefix = split_uri(uri)
        top = self.root / bucket_name / prefix
        paths = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        count = 0
        with self._lock:
            bucket = self._client.bucket(bucket_name)
            for path in paths:
                stat = path.stat()
                state = (stat.st_size, stat.st_mtime_ns)
                if self._uploaded.get(path) == state:
                    continue
                name = path.relative_to(self.root / bucket_name).as_posix()
                bucket.blob(name).upload_from_filename(str(path))
                self._uploaded[path] = state
                count += 1
        return count


class CloudStorage:
    """The GCS emulator at ``url``, read as Vertex AI reads a model's ``artifact_uri``."""

    def __init__(self, url: str, mount_root: str | None = None) -> None:
        self.url = url
        self.client = storage.Client(
            project="vertex-emulator",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": url},
        )
        self.mirror = MountMirror(mount_root, self.client) if mount_root else None

    def list(self, uri: str) -> list[str]:
        """Object names under the folder ``uri`` (after the mount's pending writes)."""
        if self.mirror:
            self.mirror.flush(uri)
        bucket, prefix = split_uri(uri)
        if self.client.lookup_bucket(bucket) is None:
            return []
        return [blob.name for blob in self.client.list_blobs(bucket, prefix=f"{prefix}/")]

    def download(self, uri: str, destination: str) -> list[str]:
        """Copy the folder ``uri`` into ``destination``; returns the relative paths copied."""
        bucket_name, prefix = split_uri(uri)
        bucket = self.client.bucket(bucket_name)
        copied = []
        for name in self.list(uri):
            relative = name[len(prefix) + 1 :]
            target = os.path.join(destination, relative)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            bucket.blob(name).download_to_filename(target)
            copied.append(relative)
        return copied

    def copy(self, uri: str, destination_uri: str) -> None:
        """Copy the folder ``uri`` to ``destination_uri`` inside Cloud Storage."""
        source_bucket, prefix = split_uri(uri)
        target_bucket, target_prefix = split_uri(destination_uri)
        if self.client.lookup_bucket(target_bucket) is None:
            self.client.create_bucket(target_bucket)
        source = self.client.bucket(source_bucket)
        for name in self.list(uri):
            source.copy_blob(
                source.blob(name),
                self.client.bucket(target_bucket),
                f"{target_prefix}/{name[len(prefix) + 1 :]}",
            )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"nothing listens on port {port}") from None
            time.sleep(0.1)


def start_gcs_emulator(port: int = 0) -> tuple[subprocess.Popen, str]:
    """``gcp-storage-emulator`` in memory on loopback; returns the process and its URL."""
    port = port or free_port()
    executable = Path(sys.executable).with_name("gcp-storage-emulator")
    process = subprocess.Popen(
        [str(executable), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, process)
    return process, f"http://127.0.0.1:{port}"
