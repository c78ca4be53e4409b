"""Layout checks and copying of ``{train,eval}/<class>/<image>`` from a folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from components.lib.data.layout import DataLayoutError, discover_layout
from components.lib.data.sources import download_dataset
from components.lib.storage import redact_uri
from tests.conftest import make_layout


def test_download_copies_every_image_and_counts_them(layout_dir: Path, tmp_path: Path) -> None:
    (layout_dir / "train" / "0red" / ".DS_Store").write_text("hidden, not listed")
    (layout_dir / "eval" / "1blue" / "notes.txt").write_text("not an image")
    copy = download_dataset(str(layout_dir), str(tmp_path / "copy"))

    assert copy.class_names == ["0red", "1blue"]
    assert copy.ignored == ("eval/1blue/notes.txt",)
    assert json.loads((tmp_path / "copy/ignored_files.json").read_text()) == {
        "not_an_image": ["eval/1blue/notes.txt"],
        "broken_link": [],
    }
    assert copy.counts() == {"train": {"0red": 4, "1blue": 4}, "eval": {"0red": 4, "1blue": 4}}
    copied = sorted(
        p.relative_to(tmp_path / "copy").as_posix() for p in (tmp_path / "copy").rglob("*.jpg")
    )
    original = sorted(p.relative_to(layout_dir).as_posix() for p in layout_dir.rglob("*.jpg"))
    assert copied == original
    assert (tmp_path / "copy/train/0red/000.jpg").read_bytes() == (
        layout_dir / "train/0red/000.jpg"
    ).read_bytes()


def test_class_index_is_sorted_folder_order(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "d", {"2green": 1, "0red": 1, "1blue": 1})
    _, layout = discover_layout(str(root))
    assert layout.class_names == ["0red", "1blue", "2green"]


def test_missing_data_uri(tmp_path: Path) -> None:
    with pytest.raises(DataLayoutError, match="does not exist"):
        discover_layout(str(tmp_path / "nowhere"))


def test_missing_split(layout_dir: Path) -> None:
    shutil.rmtree(layout_dir / "eval")
    with pytest.raises(DataLayoutError, match="split folder 'eval' is missing"):
        discover_layout(str(layout_dir))


def test_class_missing_in_one_split(layout_dir: Path) -> None:
    shutil.rmtree(layout_dir / "eval" / "1blue")
    with pytest.raises(DataLayoutError, match=r"\['1blue'\] missing from split 'eval'"):
        discover_layout(str(layout_dir))


def test_empty_class(layout_dir: Path) -> None:
    for image in (layout_dir / "train" / "1blue").iterdir():
        image.unlink()
    (layout_dir / "train" / "1blue" / "notes.txt").write_text("no images here")
    with pytest.raises(DataLayoutError, match=r"\['1blue'\] in split 'train' hold no images"):
        discover_layout(str(layout_dir))


def test_split_without_class_folders(layout_dir: Path) -> None:
    shutil.rmtree(layout_dir / "train")
    (layout_dir / "train").mkdir()
    with pytest.raises(DataLayoutError, match=r"split 'train' .* has no class folders"):
        discover_layout(str(layout_dir))


def test_signed_urls_and_passwords_never_reach_messages() -> None:
    signed = (
        "https://storage.example.com/bucket/beers?X-Goog-Signature=SECRET&X-Goog-Credential=KEY"
    )
    assert redact_uri(signed) == "https://storage.example.com/bucket/beers?<redacted>"
    assert (
        redact_uri("https://user:SECRET@host.example/data")
        == "https://host.example/data?<redacted>"
    )
    assert redact_uri("gs://bucket/beers") == "gs://bucket/beers"
    assert redact_uri("/data/beers") == "/data/beers"
    with pytest.raises(DataLayoutError) as raised:
        discover_layout("unknownproto://user:SECRET@host/data?token=SECRET")
    assert "SECRET" not in str(raised.value) and "<redacted>" in str(raised.value)


def test_the_fingerprint_follows_the_images_and_nothing_else(tmp_path: Path) -> None:
    from components.lib.data.layout import fingerprint_data
    from tests.conftest import write_image

    data = make_layout(tmp_path / "data")
    first, count = fingerprint_data(str(data))
    assert count == 16 and first.startswith("sha256:")
    assert fingerprint_data(str(data) + "/")[0] == first, "listed again: unchanged"
    (data / "train/0red/notes.txt").write_text("not an image")
    (data / "train/0red/.DS_Store").write_bytes(b"hidden")
    (data / "README.md").write_text("beside the splits")
    assert fingerprint_data(str(data))[0] == first, "files training does not read"

    added = data / "train/0red/900.jpg"
    write_image(added, (200, 40, 40))
    with_added = fingerprint_data(str(data))
    assert with_added[0] != first and with_added[1] == 17
    replaced = data / "eval/1blue/000.jpg"
    write_image(replaced, (10, 10, 10), size=60)
    assert fingerprint_data(str(data))[0] not in (first, with_added[0])
    added.unlink()
    replaced.unlink()
    assert fingerprint_data(str(data))[1] == 15
