"""Vertex AI's prediction protocol in JSON: what a request carries and what an answer says.

``{"instances": [{"bytes": {"b64": "..."}}, ...]}`` in, ``{"predictions": [{"CLASSES": 1,
"PROBABILITIES": [...]}, ...]}`` out, errors as ``{"error": {"code", "message", "status"}}``.
No TensorFlow here: a server answers malformed requests without loading it.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from PIL import BmpImagePlugin, GifImagePlugin, ImageFile, JpegImagePlugin, PngImagePlugin

from components.lib.serving.contract import OUTPUT_CLASSES, OUTPUT_PROBABILITIES, SERVING_INPUT

# The formats that the serving graph's decode_image reads, by their first bytes, and Pillow's
# reader of each one's header. The readers are called directly, not through Image.open, whose own
# decompression-bomb check would refuse large images without saying their size.
_IMAGE_HEADERS: tuple[tuple[bytes, type[ImageFile.ImageFile]], ...] = (
    (b"\xff\xd8\xff", JpegImagePlugin.JpegImageFile),
    (b"\x89PNG\r\n\x1a\n", PngImagePlugin.PngImageFile),
    (b"GIF87a", GifImagePlugin.GifImageFile),
    (b"GIF89a", GifImagePlugin.GifImageFile),
    (b"BM", BmpImagePlugin.BmpImageFile),
)


@dataclass(frozen=True)
class ServingLimits:
    """What one request may carry; larger ones are refused with HTTP 413 or 400.

    The pixel limits bound what decoding one image costs, read from the image's header before
    TensorFlow decodes it: a 48 KB PNG can declare 20,000 x 20,000 pixels (1.2 GB decoded), and
    a very long thin one makes the antialiased resize allocate its long side x 224 x 3 floats.
    """

    max_body_bytes: int = 10 * 1024 * 1024
    max_instances: int = 256
    max_image_pixels: int = 25_000_000  # a 6,000 x 4,000 photo fits; about 100 MB to decode
    max_image_side: int = 16_384

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_instances", "max_image_pixels", "max_image_side"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")


DEFAULT_LIMITS = ServingLimits()
ONLINE_REQUEST_LIMIT_BYTES = 1_572_864
"""Vertex AI refuses an online prediction request over 1.5 MB: one phone photo in base64 can be
more, so clients send ``shrunk`` images (the page and ``pipeline.predict`` do)."""
SHRINK_ABOVE_BYTES = 512 * 1024
SHRINK_TO_SIDE = 1024
"""Images larger than this are sent at most this many pixels a side, as JPEG: the model
resizes to its input size (at most 260 px) anyway, so the answer barely moves."""


def shrunk(image: bytes) -> bytes:
    """``image`` as it is when it is small, else upright (its EXIF orientation applied), at
    most ``SHRINK_TO_SIDE`` pixels a side, as JPEG: a request of a few of them stays far below
    the online limit and the server's body limit. BadRequestError for bytes that do not
    decode: sent in a batch, one would fail every instance of it."""
    import io

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(image)) as opened:
            if len(image) <= SHRINK_ABOVE_BYTES:
                opened.load()
                return image
            upright = ImageOps.exif_transpose(opened).convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise BadRequestError(f"not a decodable image: {error}") from None
    upright.thumbnail((SHRINK_TO_SIDE, SHRINK_TO_SIDE))
    out = io.BytesIO()
    upright.save(out, "JPEG", quality=90)
    return out.getvalue() if out.tell() < len(image) else image


class BadRequestError(ValueError):
    """A prediction request that does not follow Vertex's format; the message says what is wrong."""


class InvalidImageError(BadRequestError):
    """Some instances are not decodable images; ``indices`` says which ones."""

    def __init__(self, indices: list[int]) -> None:
        super().__init__(f"instance(s) {indices} are not decodable JPEG/PNG/BMP/GIF images")
        self.indices = indices


def decode_instances(body: bytes, limits: ServingLimits) -> list[bytes]:
    """Image bytes of a Vertex request ``{"instances": [{"bytes": {"b64": "..."}}, ...]}``.

    Like TF Serving, an instance may also be ``{"b64": "..."}``, since the signature has one input.
    More than ``limits.max_instances`` instances are refused; bytes that cannot be an image (by
    their header) or that declare more pixels than the limits allow are refused before any model
    sees them.
    """
    try:
        request = json.loads(body)
    except RecursionError:
        raise BadRequestError("the request body is JSON nested too deeply") from None
    except ValueError as error:  # not JSON, not UTF-8, or an integer of over 4,300 digits
        raise BadRequestError(f"the request body is not JSON: {error}") from None
    if not isinstance(request, dict) or "instances" not in request:
        raise BadRequestError('the request needs an "instances" list: {"instances": [...]}')
    instances = request["instances"]
    if not isinstance(instances, list) or not instances:
        raise BadRequestError('"instances" must be a non-empty list')
    if len(instances) > limits.max_instances:
        raise BadRequestError(
            f"{len(instances)} instances in one request; the limit is {limits.max_instances}: "
            "split the request"
        )
    images = [instance_bytes(index, instance) for index, instance in enumerate(instances)]
    sizes = [image_size(image) for image in images]
    not_images = [i for i, size in enumerate(sizes) if size is None]
    if not_images:
        raise InvalidImageError(not_images)
    for index, (width, height) in enumerate(sizes):
        if width * height > limits.max_image_pixels or max(width, height) > limits.max_image_side:
            raise BadRequestError(
                f"instance {index} is {width} x {height} pixels; the limit is "
                f"{limits.max_image_pixels:,} pixels and {limits.max_image_side:,} per side: "
                "send a smaller image (the model sees it at a few hundred pixels)"
            )
    return images


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) that a JPEG/PNG/GIF/BMP's header declares, read without decoding it;
    None when the bytes are not one of these formats or their header is unreadable."""
    for signature, reader in _IMAGE_HEADERS:
        if data.startswith(signature):
            try:
                return reader(io.BytesIO(data)).size
            except Exception:  # Pillow raises many kinds on a malformed header
                return None
    return None


def instance_bytes(index: int, instance: object) -> bytes:
    """The image bytes of one instance; ``index`` names it in the error."""
    encoded = instance.get(SERVING_INPUT, instance) if isinstance(instance, dict) else None
    if not isinstance(encoded, dict) or not isinstance(encoded.get("b64"), str):
        raise BadRequestError(
            f'instance {index} must be {{"{SERVING_INPUT}": {{"b64": "<base64 image>"}}}}'
        )
    try:
        return base64.b64decode(encoded["b64"], validate=True)
    except binascii.Error:
        raise BadRequestError(f"instance {index}: the b64 value is not valid base64") from None


def request_body(images: list[bytes]) -> bytes:
    """A Vertex prediction request of ``images``, one instance each (what a client sends)."""
    instances = [{SERVING_INPUT: {"b64": base64.b64encode(image).decode()}} for image in images]
    return json.dumps({"instances": instances}).encode()


def prediction_rows(classes: Any, probabilities: Any) -> list[dict[str, Any]]:
    """TF Serving's row format of the two outputs: one ``{CLASSES, PROBABILITIES}`` per image."""
    return [
        {OUTPUT_CLASSES: int(label), OUTPUT_PROBABILITIES: [float(p) for p in row]}
        for label, row in zip(classes, probabilities, strict=True)
    ]


def error_body(status: HTTPStatus, message: str) -> dict[str, Any]:
    """Google's JSON error shape, as Vertex AI answers."""
    return {"error": {"code": status.value, "message": message, "status": status.phrase}}
