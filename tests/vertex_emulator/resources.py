"""Resource names, validation rules and pagination as the Vertex AI API applies them.

The real service takes a project ID or number in a request and always answers with the project
NUMBER (``projects/123456789012/locations/...``); code that compares names it built from the
project ID with names the service returned breaks there, so the emulator does the same.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Sequence
from typing import Any, TypeVar

import grpc

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 100
# Documented formats (Model.version_aliases, labels).
ALIAS = re.compile(r"[a-z][a-zA-Z0-9-]{0,126}[a-z0-9]")
LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
_PARENT = re.compile(r"projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)")
_FILTER = re.compile(r'^\s*display_name\s*=\s*"(?P<value>[^"]*)"\s*$')


class ApiError(Exception):
    """What the API answers instead of a result: a gRPC status code and its message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def not_found(name: str) -> ApiError:
    return ApiError(grpc.StatusCode.NOT_FOUND, f"{name} not found.")


def invalid(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message)


def project_number(project: str) -> str:
    """A stable 12-digit number for a project ID (a number stays itself)."""
    if project.isdigit():
        return project
    digest = int(hashlib.sha256(project.encode()).hexdigest(), 16)
    return str(10**11 + digest % (9 * 10**11))


class Names:
    """Parses request names and builds the names the service answers with."""

    def __init__(self, projects: Sequence[str]) -> None:
        self._numbers = {project: project_number(project) for project in projects}

    def parent(self, parent: str) -> str:
        """``projects/<id or number>/locations/L`` -> ``projects/<number>/locations/L``."""
        match = _PARENT.fullmatch(parent)
        if not match:
            raise invalid(f"Invalid parent {parent!r}: expected projects/*/locations/*.")
        project = match["project"]
        number = self._numbers.get(project) or (project if project.isdigit() else None)
        if number is None:
            raise ApiError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"Permission denied on resource project {project} (or it may not exist).",
            )
        return f"projects/{number}/locations/{match['location']}"

    def canonical(self, name: str) -> str:
        """A resource name with its project as a number: ``projects/N/locations/L/...``."""
        match = _PARENT.match(name)
        if not match:
            raise invalid(f"Invalid resource name {name!r}.")
        return self.parent(match.group(0)) + name[match.end() :]


def display_name_filter(text: str) -> str | None:
    """The display name of a ``display_name="X"`` filter; None for no filter."""
    if not text:
        return None
    match = _FILTER.match(text)
    if not match:
        raise invalid(f'Unsupported filter {text!r} (the emulator knows display_name="...").')
    return match["value"]


def page(
    items: list[T], page_size: int, page_token: str, default_size: int = DEFAULT_PAGE_SIZE
) -> tuple[list[T], str]:
    """One page of ``items`` and the token of the next ("" after the last); a request without
    a page size gets ``default_size`` items, as the service picks its own."""
    size = page_size if page_size > 0 else default_size
    if page_size < 0:
        raise invalid("page_size must not be negative.")
    start = 0
    if page_token:
        try:
            start = int(base64.urlsafe_b64decode(page_token.encode()).decode())
        except ValueError:
            raise invalid(f"Invalid page_token {page_token!r}.") from None
    end = start + size
    token = base64.urlsafe_b64encode(str(end).encode()).decode() if end < len(items) else ""
    return items[start:end], token


def check_labels(labels: dict[str, str]) -> None:
    for key, value in labels.items():
        if not LABEL_KEY.fullmatch(key) or not LABEL_VALUE.fullmatch(value):
            raise invalid(
                f"Invalid label {key}={value!r}: keys and values have at most 63 lowercase "
                "letters, digits, underscores and dashes, and keys start with a letter."
            )


def check_aliases(aliases: Sequence[str]) -> None:
    for alias in aliases:
        if not ALIAS.fullmatch(alias) or alias.isdigit():
            raise invalid(
                f"Invalid version alias {alias!r}: it must match [a-z][a-zA-Z0-9-]{{0,126}}"
                "[a-z0-9]."
            )
    if len(set(aliases)) != len(aliases):
        raise invalid(f"Duplicate version aliases in {list(aliases)}.")


def check_machine_spec(spec: Any, where: str) -> None:
    """INVALID_ARGUMENT for a machine and GPU pairing Vertex AI refuses (the GPU families of
    ``components.lib.targets.machines``), as a job or deploy that names it is refused."""
    from components.lib.targets.machines import machine_problem

    if not spec.machine_type:
        raise invalid(f"{where}.machine_type is required.")
    accelerator = spec.accelerator_type.name
    if accelerator == "ACCELERATOR_TYPE_UNSPECIFIED":
        accelerator = ""
    if problem := machine_problem(spec.machine_type, accelerator, spec.accelerator_count):
        raise invalid(f"{where}: {problem}.")
