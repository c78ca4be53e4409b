"""A Vertex AI emulator for tests and demos: the services this project calls, over the real SDK's
gRPC (and REST predictions), with the GCS emulator as its storage. See ``server.py``."""

from tests.vertex_emulator.server import VertexEmulator
from tests.vertex_emulator.storage import CloudStorage, start_gcs_emulator
from tests.vertex_emulator.tls import write_self_signed_certificate

__all__ = ["CloudStorage", "VertexEmulator", "start_gcs_emulator", "write_self_signed_certificate"]
