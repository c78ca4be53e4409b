"""The download step on ``gs://`` (folders and import files) through the real gcsfs client,
against the GCS emulator."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from pathlib import Path

import fsspec
import pytest
from google.cloud import storage

from components.lib.data.layout import DataLayoutError, DatasetLayout
from components.lib.data.sources import (
    BadRow,
    download_dataset,
    fingerprint_source,
    read_bad_rows,
)
from tests.conftest import GCS_BUCKET, gcs_emulator_client, make_layout, upload_folder


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


def test_the_fingerprint_of_a_bucket_follows_its_content(
    emulated_gcs: storage.Client, tmp_path: Path
) -> None:
    from components.lib.data.layout import fingerprint_data

    folder = make_layout(tmp_path / "data")
    data_uri = upload_folder(emulated_gcs, folder, f"fingerprint-{tmp_path.name}")
    first, count = fingerprint_data(data_uri)
    assert count == 16
    upload_folder(emulated_gcs, folder, f"fingerprint-{tmp_path.name}")
    assert fingerprint_data(data_uri)[0] == first, "the same bytes uploaded again"
    replaced = folder / "train/0red/000.jpg"
    replaced.write_bytes(replaced.read_bytes() + b"\0")
    upload_folder(emulated_gcs, folder, f"fingerprint-{tmp_path.name}")
    assert fingerprint_data(data_uri)[0] != first


@pytest.mark.slow
def test_bucket_to_bucket_steps_write_what_the_folder_steps_write(
    emulated_gcs: storage.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Download, validate and preprocess with every artifact in a bucket (as on Vertex AI,
    through gcsfs rather than the /gcs mount) give the records the same steps give on folders."""
    from components.lib import storage as storage_seam
    from components.lib.data import validation
    from components.lib.data.records import preprocess_dataset
    from components.lib.data.validation import validate_dataset

    # The emulator serves one connection at a time: one request in flight, as gcsfs is told.
    monkeypatch.setattr(storage_seam, "READ_THREADS", 1)
    monkeypatch.setattr(validation, "IO_THREADS", 1)

    folder = make_layout(tmp_path / "data", {"0red": 3, "1blue": 2})
    data_uri = upload_folder(emulated_gcs, folder, f"data-{tmp_path.name}")
    runs = {
        "gcs": f"gs://{GCS_BUCKET}/artifacts-{tmp_path.name}",
        "folder": str(tmp_path / "local"),
    }
    for root in runs.values():
        download_dataset(data_uri if root.startswith("gs://") else str(folder), f"{root}/raw")
        validate_dataset(f"{root}/raw", f"{root}/valid", str(tmp_path / f"{root[-5:]}.md"))
        preprocess_dataset(f"{root}/valid", f"{root}/records", 16, images_per_shard=2)

    fs = fsspec.filesystem("gs")
    names = sorted(path.name for path in Path(runs["folder"], "records").iterdir())
    in_bucket = sorted(path.rsplit("/", 1)[-1] for path in fs.ls(f"{runs['gcs']}/records"))
    assert in_bucket == names and "train-00002-of-00003.tfrecord" in names
    for name in names:
        local = Path(runs["folder"], "records", name).read_bytes()
        assert fs.cat_file(f"{runs['gcs']}/records/{name}") == local


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
    bucket = emulated_gcs.bucket(GCS_BUCKET)
    prefix = data_uri.removeprefix(f"gs://{GCS_BUCKET}/")
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

    first, count = fingerprint_source(f"{data_uri}/import.csv")
    assert count == 10 and fingerprint_source(f"{data_uri}/import.csv")[0] == first
    bucket.blob(f"{prefix}/train/1blue/000.jpg").upload_from_string(b"other bytes")
    assert fingerprint_source(f"{data_uri}/import.csv")[0] != first, "an image replaced"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_bucket_fails_at_once_naming_the_cause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cloud Storage (the emulator's address) refuses connections: the data steps say so in
    seconds, where gcsfs's retries took two minutes to report that the data "does not exist"."""
    port = _closed_port()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    fsspec.filesystem("gs").clear_instance_cache()
    started = time.monotonic()
    with pytest.raises(DataLayoutError) as raised:
        fingerprint_source("gs://beer-data/data")
    assert time.monotonic() - started < 30
    assert str(raised.value) == (
        "cannot open data_uri 'gs://beer-data/data': cannot reach Cloud Storage at "
        f"127.0.0.1:{port}: Connection refused; check the network connection, proxy and firewall"
    )


def test_a_broken_key_file_is_named_not_taken_for_anonymous_access(
    gcs_emulator: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """gcsfs falls back to anonymous access when GOOGLE_APPLICATION_CREDENTIALS cannot be read;
    the data steps name the file instead (here the bucket would even have answered)."""
    folder = make_layout(tmp_path / "data")
    data_uri = upload_folder(gcs_emulator_client(gcs_emulator), folder, "keyed")
    broken = tmp_path / "key.json"
    broken.write_text("{not json")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(broken))
    fsspec.filesystem("gs").clear_instance_cache()
    with pytest.raises(DataLayoutError) as raised:
        download_dataset(data_uri, str(tmp_path / "out"))
    assert str(raised.value).startswith(
        f"cannot open data_uri {data_uri!r}: the credentials file {broken} "
        "(GOOGLE_APPLICATION_CREDENTIALS) cannot be used: "
    )
