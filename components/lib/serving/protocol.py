"""Vertex AI's prediction protocol in JSON: what a request carries and what an answer says.

``{"instances": [{"bytes": {"b64": "..."}}, ...]}`` in, ``{"predictions": [{"CLASSES": 1,
"PROBABILITIES": [...]}, ...]}`` out, errors as ``{"error": {"code", "message", "status"}}``.
No TensorFlow here: a server answers malformed requests without loading it.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from components.lib.serving.contract import OUTPUT_CLASSES, OUTPUT_PROBABILITIES, SERVING_INPUT

# The formats that the serving graph's decode_image reads, by their first bytes.
_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


@dataclass(frozen=True)
class ServingLimits:
    """What one request may carry; larger ones are refused with HTTP 413 or 400."""

    max_body_bytes: int = 10 * 1024 * 1024
    max_instances: int = 256


DEFAULT_LIMITS = ServingLimits()


class BadRequestError(ValueError):
    """A prediction request that does not follow Vertex's format; the message says what is wrong."""


class InvalidImageError(BadRequestError):
    """Some instances are not decodable images; ``indices`` says which ones."""

    def __init__(self, indices: list[int]) -> None:
        super().__init__(f"instance(s) {indices} are not decodable JPEG/PNG/BMP/GIF images")
        self.indices = indices


def decode_instances(body: bytes, max_instances: int) -> list[bytes]:
    """Image bytes of a Vertex request ``{"instances": [{"bytes": {"b64": "..."}}, ...]}``.

    Like TF Serving, an instance may also be ``{"b64": "..."}``, since the signature has one input.
    More than ``max_instances`` instances are refused rather than batched into one huge call;
    bytes that cannot be an image (by their first bytes) are refused before any model sees them.
    """
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadRequestError(f"the request body is not JSON: {error}") from None
    if not isinstance(request, dict) or "instances" not in request:
        raise BadRequestError('the request needs an "instances" list: {"instances": [...]}')
    instances = request["instances"]
    if not isinstance(instances, list) or not instances:
        raise BadRequestError('"instances" must be a non-empty list')
    if len(instances) > max_instances:
        raise BadRequestError(
            f"{len(instances)} instances in one request; the limit is {max_instances}: "
            "split the request"
        )
    images = [instance_bytes(index, instance) for index, instance in enumerate(instances)]
    not_images = [i for i, image in enumerate(images) if not image.startswith(_IMAGE_SIGNATURES)]
    if not_images:
        raise InvalidImageError(not_images)
    return images


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
