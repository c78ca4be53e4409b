"""Data validation: each kind of bad file is skipped or converted, and reported under its reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from components.lib.layout import download_dataset
from components.lib.validation import DataValidationError, validate_dataset
from tests.conftest import add_bad_files, make_layout


@pytest.fixture
def dirty(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = make_layout(tmp_path / "source", {"0red": 40, "1blue": 40})
    bad = add_bad_files(root, "0red", "1blue")
    download_dataset(str(root), str(tmp_path / "raw"))
    return tmp_path / "raw", bad


def test_every_bad_file_is_listed_under_its_reason(
    dirty: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    raw, bad = dirty
    report = validate_dataset(str(raw), str(tmp_path / "clean"), str(tmp_path / "report.md"))

    assert set(report.skipped) == {"not_an_image", "undecodable", "too_small", "duplicate", "leak"}
    assert sorted(report.skipped["not_an_image"]) == sorted([bad["notes"], bad["text"]])
    assert sorted(report.skipped["undecodable"]) == sorted([bad["corrupt"], bad["truncated"]])
    assert report.skipped["too_small"] == [bad["tiny"]]
    assert len(report.skipped["duplicate"]) == 1 and "0red" in report.skipped["duplicate"][0]
    assert report.skipped["leak"] == [bad["leaked"]]
    assert report.converted["grayscale"] == ["train/0red/gray.png"]
    assert report.converted["cmyk"] == ["train/0red/cmyk.jpg"]
    assert report.converted["alpha"] == ["train/0red/alpha.png"]
    assert report.converted["exif_rotated"] == ["train/0red/rotated.jpg"]
    assert report.converted["other_format"] == ["train/0red/other.webp"]
    assert report.counts == {"train": {"0red": 45, "1blue": 40}, "eval": {"0red": 40, "1blue": 40}}

    markdown = (tmp_path / "report.md").read_text()
    for path in bad.values():
        assert f"`{path}`" in markdown
    saved = json.loads((tmp_path / "clean/validation.json").read_text())
    assert saved["unusable"] == 7 and saved["usable"] == 165


def test_converted_images_are_upright_opaque_rgb(
    dirty: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    raw, _ = dirty
    validate_dataset(str(raw), str(tmp_path / "clean"), str(tmp_path / "report.md"))
    clean = tmp_path / "clean/train/0red"

    rotated = Image.open(clean / "rotated.png")
    assert rotated.mode == "RGB" and rotated.size == (48, 64)
    assert Image.open(clean / "alpha.png").getpixel((5, 5)) == (255, 255, 255)
    assert Image.open(clean / "gray.png").mode == "RGB"
    assert (clean / "000.jpg").read_bytes() == (raw / "train/0red/000.jpg").read_bytes()
    assert not (clean / "corrupt.jpg").exists() and not (clean / "copy.jpg").exists()


def test_too_many_unusable_files_fail_with_the_list(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "source", {"0red": 4, "1blue": 4})
    for index in range(2):
        (root / f"train/1blue/broken{index}.jpg").write_bytes(b"garbage")
    with pytest.raises(DataValidationError) as raised:
        validate_dataset(str(root), str(tmp_path / "clean"), str(tmp_path / "report.md"))
    message = str(raised.value)
    assert "2 of 18 files (11.1%) are unusable, more than the allowed 5%" in message
    assert "train/1blue/broken0.jpg" in message and "train/1blue/broken1.jpg" in message
    assert "broken1.jpg" in (tmp_path / "report.md").read_text()


def test_a_class_left_without_images_fails(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "source", {"0red": 30, "1blue": 1})
    (root / "train/1blue/000.jpg").write_bytes(b"garbage")
    with pytest.raises(DataValidationError, match="no usable image left in train/1blue"):
        validate_dataset(str(root), str(tmp_path / "clean"), str(tmp_path / "r.md"))


def test_imbalance_is_a_warning(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "source", {"0red": 16, "1blue": 4})
    report = validate_dataset(str(root), str(tmp_path / "clean"), str(tmp_path / "r.md"))
    assert report.warnings == ["class imbalance in train: 16 vs 4 images"]
