"""What the emulated services share: names, operations, storage, one lock, id numbers."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Any, TypeVar

from google.protobuf import timestamp_pb2

from tests.vertex_emulator.operations import Operations
from tests.vertex_emulator.resources import DEFAULT_PAGE_SIZE, Names, page
from tests.vertex_emulator.storage import CloudStorage

T = TypeVar("T")


@dataclass
class Context:
    names: Names
    operations: Operations
    storage: CloudStorage | None
    default_page_size: int = DEFAULT_PAGE_SIZE
    lock: threading.RLock = field(default_factory=threading.RLock)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1_000_000_001))

    def new_id(self) -> str:
        """A numeric resource id, as Vertex AI gives models, endpoints and deployed models."""
        return str(next(self._ids))

    def page(self, items: list[T], request: Any) -> tuple[list[T], str]:
        """The page of ``items`` that a list ``request`` asks for, and the next page's token."""
        return page(items, request.page_size, request.page_token, self.default_page_size)


def now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp
