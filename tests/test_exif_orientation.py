"""Photos stored turned, with an EXIF Orientation tag, are seen and classified upright.

Phones store a photo as the sensor read it and record in EXIF how to turn it for display;
``tf.io.decode_image`` ignores that tag. The exported graph applies it (``decode_and_resize``),
so TF Serving and ``tf.saved_model.load`` both see the photo as the person who took it did.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from components.lib.data.images import apply_orientation, decode_and_resize, exif_orientation
from components.lib.serving.prediction import ServingModel
from components.lib.serving.tf_serving import load_like_tf_serving
from tests.conftest import beer_photos, sample_photos

IMAGE_SIZE = 160
ORIENTATIONS = range(1, 9)
T = Image.Transpose
# How a camera stores an upright scene so that a viewer, applying the tag, shows it upright:
# the inverse of the turn EXIF asks the viewer for (checked against PIL's exif_transpose below).
STORED_AS = {
    2: T.FLIP_LEFT_RIGHT,
    3: T.ROTATE_180,
    4: T.FLIP_TOP_BOTTOM,
    5: T.TRANSPOSE,
    6: T.ROTATE_90,
    7: T.TRANSVERSE,
    8: T.ROTATE_270,
}


def tagged_jpeg(upright: bytes, orientation: int) -> bytes:
    """The photo stored turned, tagged with ``orientation`` so that viewers show it upright.

    Made from TensorFlow's decoding of the photo, so that only the JPEG re-encoding (quality
    100, no chroma subsampling) tells it apart from the original.
    """
    pixels = tf.io.decode_jpeg(upright).numpy()
    # Whole 8x8 blocks: a turned copy then keeps JPEG's block grid, and its encoding noise.
    image = Image.fromarray(pixels[: len(pixels) // 8 * 8, : pixels.shape[1] // 8 * 8])
    stored = image.transpose(STORED_AS[orientation]) if orientation in STORED_AS else image
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=100, subsampling=0, exif=exif)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(buffer)), dtype=float)
    assert np.abs(shown - np.asarray(image, dtype=float)).mean() < 1  # upright in a viewer
    return buffer.getvalue()


def without_exif(jpeg: bytes) -> bytes:
    """The same stored pixels, the tag gone: what a decoder that ignores EXIF sees."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(buffer, format="JPEG", quality=100, subsampling=0)
    return buffer.getvalue()


def decoded(image: bytes) -> np.ndarray:
    return decode_and_resize(tf.constant(image), IMAGE_SIZE).numpy().astype(float)


def exif_app1(orientation: int, little_endian: bool, value_type: int = 3) -> bytes:
    """An APP1 segment made by hand: TIFF header, IFD0 with Make and Orientation entries."""
    order = "<" if little_endian else ">"
    entries = [
        struct.pack(order + "HHI4s", 0x010F, 2, 4, b"cam\x00"),
        struct.pack(order + "HHIH2x", 0x0112, value_type, 1, orientation),
    ]
    tiff = (b"II" if little_endian else b"MM") + struct.pack(order + "HI", 42, 8)
    ifd = struct.pack(order + "H", len(entries)) + b"".join(entries) + b"\x00" * 4
    body = b"Exif\x00\x00" + tiff + ifd
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_pixels_are_turned_as_pil_turns_them(orientation: int) -> None:
    """Exactly, on a non-square image: PIL's ``exif_transpose`` is the reference."""
    stored = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image = Image.fromarray(stored)
    image.getexif()[0x0112] = orientation
    expected = np.asarray(ImageOps.exif_transpose(image))

    turned = apply_orientation(tf.constant(stored), tf.constant(orientation)).numpy()

    np.testing.assert_array_equal(turned, expected)


@pytest.fixture(scope="module")
def plain_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), (200, 40, 40)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize("little_endian", [True, False], ids=["II", "MM"])
@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_orientation_is_read_in_either_byte_order(
    plain_jpeg: bytes, orientation: int, little_endian: bool
) -> None:
    """The APP1 segment right after SOI (the EXIF rule) or after JFIF's APP0 (what PIL writes)."""
    segment = exif_app1(orientation, little_endian)
    first = plain_jpeg[:2] + segment + plain_jpeg[2:]
    after_app0 = plain_jpeg[:20] + segment + plain_jpeg[20:]
    assert plain_jpeg[2:4] == b"\xff\xe0" and plain_jpeg[4:6] == b"\x00\x10"  # APP0 ends at 20

    assert int(exif_orientation(tf.constant(first))) == orientation
    assert int(exif_orientation(tf.constant(after_app0))) == orientation
    assert decoded(first).shape == (IMAGE_SIZE, IMAGE_SIZE, 3)


def test_no_or_malformed_exif_means_as_stored(plain_jpeg: bytes) -> None:
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    segment = exif_app1(6, little_endian=True)
    cases = {
        "no EXIF": plain_jpeg,
        "PNG": png.getvalue(),
        "empty": b"",
        "not an image": b"this is text",
        "truncated in the segment": plain_jpeg[:2] + segment[:30],
        "orientation 9": plain_jpeg[:2] + exif_app1(9, True) + plain_jpeg[2:],
        "orientation 0": plain_jpeg[:2] + exif_app1(0, True) + plain_jpeg[2:],
        "not a SHORT": plain_jpeg[:2] + exif_app1(6, True, value_type=4) + plain_jpeg[2:],
        "bad byte order": plain_jpeg[:2] + segment.replace(b"II*", b"XY*") + plain_jpeg[2:],
        "bad IFD offset": plain_jpeg[:2]
        + segment.replace(b"II*\x00\x08\x00\x00\x00", b"II*\x00\xff\xff\x00\x00")
        + plain_jpeg[2:],
        "random bytes": bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8)),
    }
    found = {name: int(exif_orientation(tf.constant(data))) for name, data in cases.items()}
    assert found == dict.fromkeys(cases, 1)


@pytest.fixture(params=["samples", "beers"])
def upright_photos(request: pytest.FixtureRequest) -> list[bytes]:
    """JPEG photos as a viewer shows them (no EXIF orientation)."""
    if request.param == "beers":
        return list(beer_photos(request.getfixturevalue("beer_data_dir"), per_class=1).values())
    return [data for name, data in sample_photos().items() if name.endswith(".jpeg")]


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_tagged_photos_decode_to_the_upright_pixels(
    upright_photos: list[bytes], orientation: int
) -> None:
    """Compared with the photo saved the same way upright (orientation 1), so that the JPEG
    encoder's own change to the pixels is common to both and only the turn can differ."""
    for photo in upright_photos:
        expected = decoded(tagged_jpeg(photo, 1))
        tagged = tagged_jpeg(photo, orientation)

        difference = np.abs(decoded(tagged) - expected)

        assert difference.mean() < 0.5 and difference.max() <= 5, (orientation, difference.max())
        if orientation != 1:
            assert np.abs(decoded(without_exif(tagged)) - expected).mean() > 5


@pytest.mark.slow
def test_tagged_photos_are_classified_like_their_upright_originals(
    backbone_model_dir: Path, backbone_serving: ServingModel, upright_photos: list[bytes]
) -> None:
    """Through ``tf.saved_model.load`` (evaluate, the local endpoint) and TF Serving's loader;
    the upright reference is each photo saved the same way with orientation 1."""
    tagged = [tagged_jpeg(photo, o) for photo in upright_photos for o in ORIENTATIONS]
    turned = [without_exif(photo) for photo in tagged]
    references = tagged[:: len(ORIENTATIONS)]
    with load_like_tf_serving(str(backbone_model_dir)) as tf_serving:
        for name, predict in (
            ("saved_model.load", lambda images: backbone_serving.predict(images).probabilities),
            ("TF Serving", lambda images: tf_serving(images)[1]),
        ):
            upright = np.repeat(predict(references), len(ORIENTATIONS), axis=0)
            served = predict(tagged)
            ignoring_exif = predict(turned)

            np.testing.assert_array_equal(served.argmax(1), upright.argmax(1), err_msg=name)
            assert np.abs(served - upright).max() < 0.03, name
            # The model does see the turn: ignoring the tag would change its answers.
            assert np.abs(ignoring_exif - upright).max() > 0.1, name
