"""Data validation: each kind of bad file is skipped or converted, and reported under its reason."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from components.lib.data.sources import download_dataset, fingerprint_source
from components.lib.data.validation import DataValidationError, validate_dataset
from tests.conftest import add_bad_files, convert_photos, make_layout, write_image


@pytest.fixture
def dirty(tmp_path: Path) -> tuple[Path, dict[str, str], dict[str, str]]:
    root = make_layout(tmp_path / "source", {"0red": 40, "1blue": 40})
    converted = convert_photos(root / "train" / "0red")
    bad = add_bad_files(root, "0red", "1blue")
    download_dataset(str(root), str(tmp_path / "raw"))
    return tmp_path / "raw", bad, converted


def test_every_bad_file_is_listed_under_its_reason(
    dirty: tuple[Path, dict[str, str], dict[str, str]], tmp_path: Path
) -> None:
    raw, bad, converted = dirty
    report = validate_dataset(str(raw), str(tmp_path / "clean"), str(tmp_path / "report.md"))

    assert set(report.skipped) == {"not_an_image", "undecodable", "too_small", "duplicate", "leak"}
    assert sorted(report.skipped["not_an_image"]) == sorted([bad["notes"], bad["text"]])
    assert sorted(report.skipped["undecodable"]) == sorted([bad["corrupt"], bad["truncated"]])
    assert report.skipped["too_small"] == [bad["tiny"]]
    assert len(report.skipped["duplicate"]) == 1 and "0red" in report.skipped["duplicate"][0]
    assert report.skipped["leak"] == [bad["leaked"]]
    for kind, name in converted.items():
        assert f"train/0red/{name}" in report.converted[kind], kind
    assert report.converted["cmyk"] == [f"train/0red/{converted['cmyk']}"]
    assert report.counts == {"train": {"0red": 40, "1blue": 40}, "eval": {"0red": 40, "1blue": 40}}

    markdown = (tmp_path / "report.md").read_text()
    for path in bad.values():
        assert f"`{path}`" in markdown
    saved = json.loads((tmp_path / "clean/validation.json").read_text())
    assert saved["unusable"] == 7 and saved["usable"] == 160


def test_converted_images_are_upright_opaque_rgb(
    dirty: tuple[Path, dict[str, str], dict[str, str]], tmp_path: Path
) -> None:
    raw, _, converted = dirty
    validate_dataset(str(raw), str(tmp_path / "clean"), str(tmp_path / "report.md"))
    clean = tmp_path / "clean/train/0red"
    original = Image.open(tmp_path / "source/eval/0red/000.jpg")

    rotated = Image.open(clean / (Path(converted["exif_rotated"]).stem + ".png"))
    assert rotated.mode == "RGB" and rotated.size == original.size
    alpha = Image.open(clean / converted["alpha"])
    assert alpha.mode == "RGB" and alpha.getpixel((5, 5))[0] > 120
    gray = Image.open(clean / converted["grayscale"])
    assert gray.mode == "RGB" and len(set(gray.getpixel((5, 5)))) == 1
    assert Image.open(clean / (Path(converted["cmyk"]).stem + ".png")).mode == "RGB"
    assert (clean / "010.jpg").read_bytes() == (raw / "train/0red/010.jpg").read_bytes()
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


def test_exif_rotation_is_applied_the_way_viewers_show_the_photo(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "source", {"0red": 4, "1blue": 4})
    upright = Image.new("RGB", (64, 48), (220, 20, 20))
    upright.paste((20, 20, 220), (32, 0, 64, 48))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    upright.transpose(Image.Transpose.ROTATE_90).save(
        root / "train/0red/phone.jpg", exif=exif, quality=95
    )
    validate_dataset(str(root), str(tmp_path / "clean"), str(tmp_path / "r.md"))

    shown = Image.open(tmp_path / "clean/train/0red/phone.png")
    assert shown.size == (64, 48)
    left, right = shown.getpixel((8, 24)), shown.getpixel((56, 24))
    assert left[0] > 180 > left[2] and right[2] > 180 > right[0]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels and holds none: what a decompression bomb
    looks like before it is decoded (a real one is a few kilobytes of compressed zeros)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [10_000, 20_000])
def test_an_oversized_image_is_skipped_and_named_and_the_run_goes_on(
    tmp_path: Path, side: int
) -> None:
    """Past Pillow's bomb threshold (10,000^2 pixels: a warning; 20,000^2: an error raised by
    open itself) the image is skipped from its header, like a corrupt file."""
    root = make_layout(tmp_path / "source", {"0red": 12, "1blue": 12})
    (root / "train/0red/bomb.png").write_bytes(png_header_only(side, side))
    download_dataset(str(root), str(tmp_path / "raw"))

    report = validate_dataset(
        str(tmp_path / "raw"), str(tmp_path / "clean"), str(tmp_path / "report.md")
    )

    assert report.skipped["too_large"] == ["train/0red/bomb.png"]
    assert report.counts["train"] == {"0red": 12, "1blue": 12}
    assert "more pixels than the decode limit" in (tmp_path / "report.md").read_text()


def test_images_in_sub_folders_count_and_broken_links_are_named(tmp_path: Path) -> None:
    """Images in sub-folders of a class folder belong to the class; a broken link is skipped and
    named in the validation report; the fingerprint counts exactly what is copied."""
    root = make_layout(tmp_path / "source", {"0red": 6, "1blue": 6})
    write_image(root / "train/0red/2019/nested.jpg", (200, 40, 40))
    write_image(root / "train/1blue/a/b/deeper.png", (40, 40, 200), fmt="PNG")
    write_image(root / "train/1blue/.thumbnails/hidden.jpg", (40, 40, 200))
    (root / "train/0red/gone.jpg").symlink_to(tmp_path / "deleted.jpg")

    digest, images = fingerprint_source(str(root))
    copy = download_dataset(str(root), str(tmp_path / "raw"), fingerprint=digest)
    report = validate_dataset(
        str(tmp_path / "raw"), str(tmp_path / "clean"), str(tmp_path / "report.md"), 32, 0.1
    )

    assert copy.counts()["train"] == {"0red": 7, "1blue": 7}
    assert images == sum(sum(classes.values()) for classes in copy.counts().values()) == 26
    assert report.counts["train"] == {"0red": 7, "1blue": 7}
    assert report.skipped["broken_link"] == ["train/0red/gone.jpg"]
    assert (
        "**a broken link: names an image that is not there** (1): `train/0red/gone.jpg`"
        in (tmp_path / "report.md").read_text()
    )
