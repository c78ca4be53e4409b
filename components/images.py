"""The container images the pipeline runs in, and the one rule that names them.

Each step runs in the smallest image that holds what it imports (a fresh Vertex AI machine pulls
its step's image every time): a light image for the steps that never import TensorFlow, CPU
TensorFlow for preprocess and evaluate, GPU TensorFlow for the steps that may get a GPU
(features, train, tuning), and the serving image (the model's container on an endpoint).
Built from ``docker/Dockerfile.<role>`` by ``docker/build.sh`` as siblings in one repository:
``REPO/NAME:TAG`` (GPU), ``REPO/NAME-cpu:TAG``, ``REPO/NAME-light:TAG``, ``REPO/NAME-serving:TAG``.

A component names its role by its ``base_image``: the role's placeholder below, which
``pipeline.pipeline.build_pipeline`` replaces with the URIs given at compile time. The
placeholders live in the reserved ``.invalid`` domain (RFC 6761): no registry can ever hold
them, so nobody can publish an image under their name, and a spec that still holds one is
refused before it is submitted, published or scheduled.
"""

from __future__ import annotations

import dataclasses
import enum
import re

VERSION = "0.1.0"
"""pyproject.toml's version: the tag docker/build.sh gives the images (tests/test_docker.py)."""

PLACEHOLDER_REGISTRY = "registry.invalid"
NAME = "image-classifier"
"""The GPU image's name; its siblings add the role (``image-classifier-light``, ...)."""


class Role(str, enum.Enum):
    """What a step needs from its image."""

    GPU = "gpu"
    CPU = "cpu"
    LIGHT = "light"
    SERVING = "serving"

    @property
    def suffix(self) -> str:
        return "" if self is Role.GPU else f"-{self.value}"


class ImageError(ValueError):
    """An image URI from which the images cannot be named."""


_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """The URI of each role's image."""

    gpu: str
    cpu: str
    light: str
    serving: str

    @classmethod
    def beside(cls, image: str, **overrides: str) -> ImageSet:
        """The images ``docker/build.sh`` pushes beside ``image`` (the GPU image, as
        ``REPO/NAME:TAG``), each one replaced by ``overrides[role]`` where given.

        A digest-pinned ``image`` names no siblings: every other role must then be given.
        """
        given = {role: uri for role, uri in overrides.items() if uri}
        unknown = set(given) - {role.value for role in Role}
        if unknown:
            raise ImageError(f"unknown image role(s): {', '.join(sorted(unknown))}")
        uris = {Role.GPU.value: image}
        if _DIGEST.search(image):
            missing = [r.value for r in Role if r is not Role.GPU and r.value not in given]
            if missing:
                raise ImageError(
                    f"{image} is pinned by digest, so the other images cannot be named beside "
                    f"it: give the {', '.join(missing)} image(s) too"
                )
        else:
            repository_and_name, _, tag = _split_tag(image)
            for role in Role:
                if role is not Role.GPU:
                    uris[role.value] = f"{repository_and_name}{role.suffix}" + (
                        f":{tag}" if tag else ""
                    )
        uris.update(given)
        return cls(**uris)

    def for_role(self, role: Role) -> str:
        return getattr(self, role.value)

    def placeholders(self) -> list[str]:
        """The URIs of this set that are still placeholders."""
        return [uri for uri in dataclasses.astuple(self) if is_placeholder(uri)]

    def refuse_placeholders(self, remedy: str) -> None:
        """``ImageError`` naming the first placeholder, and ``remedy``, when any is left: no
        registry holds them, so a run on Vertex AI would fail at its first step's pull."""
        if placeholders := self.placeholders():
            raise ImageError(f"{placeholders[0]} is a placeholder that no registry holds: {remedy}")


def _split_tag(image: str) -> tuple[str, str, str]:
    """``REPO/NAME:TAG`` -> ``(REPO/NAME, ":", TAG)``; a port in the host is not a tag."""
    head, sep, tail = image.rpartition(":")
    if sep and "/" not in tail:
        return head, sep, tail
    return image, "", ""


def is_placeholder(uri: str) -> bool:
    """Whether ``uri`` is one of the placeholders, which no registry holds."""
    return uri.split("/", 1)[0] == PLACEHOLDER_REGISTRY


PLACEHOLDERS = ImageSet.beside(f"{PLACEHOLDER_REGISTRY}/{NAME}:{VERSION}")
"""The images compiled into a spec when none is given (the checked-in pipeline.yaml)."""
