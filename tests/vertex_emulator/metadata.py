"""MetadataService: the Vertex ML Metadata calls of ``PipelineJob.submit(experiment=...)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.vertex_emulator.context import Context


class Metadata:
    def __init__(self, context: Context) -> None:
        self.context = context

    def rpcs(self, rpc: Callable[..., Any]) -> list[Any]:
        return []
