"""The download step on ``gs://`` (folders and import files) through the real gcsfs client,
against the GCS emulator."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from components.lib.data.layout import DataLayoutError, DatasetLayout
from components.lib.data.sources import BadRow, download_dataset, read_bad_rows
from tests.conftest import make_layout

BUCKET = "beer-data"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def gcs_emulator() -> Iterator[str]:
    """``gcp-storage-emulator`` on loopback, in memory; yields its URL."""
    port = _free_port()
    emulator = Path(sys.executable).with_name("gcp-storage-emulator")
    process = subprocess.Popen(
        [str(emulator), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail("the GCS emulator did not start")
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def emulated_gcs(gcs_emulator: str, monkeypatch: pytest.MonkeyPatch) -> storage.Client:
    """Clients of this test (google-cloud-storage, gcsfs via fsspec) talk to the emulator."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    monkeypatch.setitem(fsspec.config.conf, "gs", {"token": "anon", "endpoint_url": gcs_emulator})
    # The emulator serves one connection at a time: one request in flight keeps gcsfs from
    # stalling on connections the emulator has not accepted yet.
    monkeypatch.setitem(fsspec.config.conf, "gather_batch_size", 1)
    fsspec.filesystem("gs").clear_instance_cache()
    return storage.Client(credentials=AnonymousCredentials(), project="test")


def upload_folder(client: storage.Client, folder: Path, prefix: str) -> str:
    bucket = client.lookup_bucket(BUCKET) or client.create_bucket(BUCKET)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            bucket.blob(f"{prefix}/{path.relative_to(folder)}").upload_from_filename(str(path))
    return f"gs://{BUCKET}/{prefix}"


def contents(layout: DatasetLayout) -> dict[str, str]:
    """Relative path -> SHA-256 of every image of a downloaded dataset."""
    root = Path(layout.root)
    return {
        str(Path(path).relative_to(root)): hashlib.sha256(Path(path).read_bytes()).hexdigest()
        for classes in layout.files.values()
        for paths in classes.values()
        for path in paths
    }


def assert_same_dataset(client: storage.Client, folder: Path, tmp_path: Path) -> None:
    data_uri = upload_folder(client, folder, f"data-{tmp_path.name}")
    from_gcs = download_dataset(data_uri, str(tmp_path / "from-gcs"))
    from_folder = download_dataset(str(folder), str(tmp_path / "from-folder"))
    assert from_gcs.class_names == from_folder.class_names
    assert from_gcs.counts() == from_folder.counts()
    assert contents(from_gcs) == contents(from_folder)
    assert len(contents(from_gcs)) == sum(sum(c.values()) for c in from_folder.counts().values())


def test_gcs_data_gives_the_same_dataset_as_the_folder(
    emulated_gcs: storage.Client, tmp_path: Path
) -> None:
    folder = make_layout(tmp_path / "data", {"0red": 3, "1blue": 2, "2green": 4})
    assert_same_dataset(emulated_gcs, folder, tmp_path)


@pytest.mark.e2e
def test_beer_photos_from_gcs_equal_the_folder(
    emulated_gcs: storage.Client, beer_data_dir: Path, tmp_path: Path
) -> None:
    """All 500 beer photos uploaded to the emulator and read back through gcsfs."""
    assert_same_dataset(emulated_gcs, beer_data_dir, tmp_path)


def test_missing_bucket_is_a_clear_layout_error(
    emulated_gcs: storage.Client, tmp_path: Path
) -> None:
    with pytest.raises(DataLayoutError, match=r"'gs://no-such-bucket/data' does not exist"):
        download_dataset("gs://no-such-bucket/data", str(tmp_path / "out"))


def test_missing_split_in_a_bucket_names_it(emulated_gcs: storage.Client, tmp_path: Path) -> None:
    folder = make_layout(tmp_path / "data")
    data_uri = upload_folder(emulated_gcs, folder / "train", "only-train")
    with pytest.raises(DataLayoutError, match="split folder 'train' is missing"):
        download_dataset(data_uri, str(tmp_path / "out"))


def test_vertex_import_files_in_a_bucket_list_gs_images(
    emulated_gcs: storage.Client, tmp_path: Path
) -> None:
    """A Vertex AI import CSV and JSONL in the bucket, naming gs:// images (one missing, one
    relative to the file), give the same copy as the folder, and the missing row by its line."""
    folder = make_layout(tmp_path / "data", {"0red": 3, "1blue": 2})
    data_uri = upload_folder(emulated_gcs, folder, f"import-{tmp_path.name}")
    rows, records = [], []
    for split, ml_use in (("train", "training"), ("eval", "test")):
        for name in ("0red", "1blue"):
            for photo in sorted((folder / split / name).iterdir()):
                uri = f"{data_uri}/{split}/{name}/{photo.name}"
                rows.append(f"{ml_use},{uri},{name}")
                records.append(
                    {
                        "imageGcsUri": uri,
                        "classificationAnnotation": {"displayName": name},
                        "dataItemResourceLabels": {"aiplatform.googleapis.com/ml_use": ml_use},
                    }
                )
    rows[0] = rows[0].replace(f"{data_uri}/", "")  # relative to the import file's folder
    rows.insert(2, f"training,{data_uri}/train/0red/missing.jpg,0red")
    bucket = emulated_gcs.bucket(BUCKET)
    prefix = data_uri.removeprefix(f"gs://{BUCKET}/")
    bucket.blob(f"{prefix}/import.csv").upload_from_string("\n".join(rows))
    bucket.blob(f"{prefix}/import.jsonl").upload_from_string(
        "\n".join(json.dumps(record) for record in records)
    )
    from_folder = download_dataset(str(folder), str(tmp_path / "from-folder"))

    for name in ("import.csv", "import.jsonl"):
        from_gcs = download_dataset(f"{data_uri}/{name}", str(tmp_path / name))

        assert from_gcs.counts() == from_folder.counts()
        assert contents(from_gcs) == contents(from_folder)
    assert read_bad_rows(str(tmp_path / "import.csv")) == [
        BadRow(3, "missing_file", f"{data_uri}/train/0red/missing.jpg")
    ]
    assert read_bad_rows(str(tmp_path / "import.jsonl")) == []
