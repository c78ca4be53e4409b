"""Run the prediction app under uvicorn: keep-alive, graceful shutdown, JSON logs.

On SIGTERM (how Vertex AI and Kubernetes stop a container) or Ctrl-C the server stops accepting
connections, lets the requests in flight finish (up to ``graceful_timeout_s``), then stops the
batchers. The socket is bound and listening before the app starts, so its address (port 0: a
free one) can be announced at once and early connections wait in the backlog.
"""

from __future__ import annotations

import logging.config
import socket
from collections.abc import Callable
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette

from components.lib.serving.logs import logging_config


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    keep_alive_s: int = 60  # idle kept-alive connections are closed after this
    graceful_timeout_s: int = 30
    log_level: str = "INFO"


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) and listening; OSError when it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def serve(
    app: Starlette,
    sock: socket.socket,
    settings: ServerSettings,
    on_listening: Callable[[str, int], None] = lambda host, port: None,
) -> int:
    """Serve ``app`` on ``sock`` until stopped; 1 if the container's model failed to load."""
    config = logging_config(settings.log_level)
    logging.config.dictConfig(config)
    logging.captureWarnings(True)  # Python's warnings as JSON lines too
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_config=config,
            access_log=False,  # the app logs every request itself, as JSON
            timeout_keep_alive=settings.keep_alive_s,
            timeout_graceful_shutdown=settings.graceful_timeout_s,
            lifespan="on",
            server_header=False,
        )
    )

    def stop() -> None:
        server.should_exit = True

    app.state.on_load_error = stop
    on_listening(*sock.getsockname()[:2])
    server.run(sockets=[sock])
    return 1 if app.state.load_error else 0
