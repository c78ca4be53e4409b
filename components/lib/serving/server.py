"""Run the prediction app under uvicorn: keep-alive, graceful shutdown, JSON logs, and limits on
what a client's connection may hold.

On SIGTERM (how Vertex AI and Kubernetes stop a container) or Ctrl-C the server stops accepting
connections, lets the requests in flight finish (up to ``graceful_timeout_s``), then stops the
batchers. The socket is bound and listening before the app starts, so its address (port 0: a
free one) can be announced at once and early connections wait in the backlog.

Connections are limited where uvicorn cannot: it has no deadline for receiving a request (its
``timeout_keep_alive`` runs only after a response, and any byte stops it), and its
``limit_concurrency`` counts open connections, so once idle sockets fill it every request,
health checks included, gets 503. ``_GuardedH11Protocol`` adds both, around uvicorn's own h11
protocol: a request must arrive complete within ``request_timeout_s``, and at
``max_connections`` the connection that has waited longest on its client is closed to make room
(one with a request in the app is never closed). h11, not httptools, parses requests because only
h11 bounds the request line and headers (``h11_max_incomplete_event_size``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import logging.config
import resource
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

import h11
import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.h11_impl import H11Protocol

from components.lib.serving.logs import FIELDS, logging_config, route_native_stderr
from components.lib.serving.protocol import error_body

logger = logging.getLogger(__name__)

# Descriptors the process keeps for itself beside client connections: the model's files,
# TensorFlow's, the log, the listening socket.
RESERVED_DESCRIPTORS = 64
CLOSE_LOG_INTERVAL_S = 10.0  # closed connections are logged as a count at most this often


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    keep_alive_s: int = 60  # idle kept-alive connections are closed after this
    graceful_timeout_s: int = 30
    log_level: str = "INFO"
    request_timeout_s: float = 30.0  # a request must arrive whole within this
    max_connections: int = 512  # open client connections at most
    max_header_bytes: int = 16 * 1024  # the request line and headers, together

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"the port must be 0 to 65535, not {self.port}")
        for name in ("request_timeout_s", "max_connections", "max_header_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be above 0, not {getattr(self, name)}")


DEFAULT_SERVER = ServerSettings()


class _ClosedConnections:
    """Connections the server closed, counted by reason; each reason is logged at once, then as
    a count at most every ``CLOSE_LOG_INTERVAL_S`` (a flood of them must not flood the log)."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}
        self._pending: asyncio.TimerHandle | None = None

    def closed(self, reason: str) -> None:
        self._counts[reason] += 1
        now = time.monotonic()
        if now - self._logged_at.get(reason, -CLOSE_LOG_INTERVAL_S) >= CLOSE_LOG_INTERVAL_S:
            self._log({reason: self._counts.pop(reason)}, now)
        elif self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(CLOSE_LOG_INTERVAL_S, self.flush)

    def flush(self) -> None:
        """Log the counts not logged yet."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self._counts:
            self._log(dict(self._counts), time.monotonic())
            self._counts.clear()

    def _log(self, counts: dict[str, int], now: float) -> None:
        described = ", ".join(f"{count} {reason}" for reason, count in counts.items())
        logger.warning(
            "closed client connections: %s",
            described,
            extra={FIELDS: {"closedConnections": counts}},
        )
        self._logged_at.update(dict.fromkeys(counts, now))


class _GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline for each request and a cap on connections."""

    settings: ClassVar[ServerSettings]
    closed: ClassVar[_ClosedConnections]

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._deadline: Any = None
        self._waiting_since: float | None = self.loop.time()  # None: a request is in the app
        self._arm_deadline()
        if len(self.connections) > self.settings.max_connections:
            waiting = [
                c for c in self.connections if c is not self and c._waiting_since is not None
            ]
            if waiting:
                min(waiting, key=lambda c: c._waiting_since)._close("evicted at the cap")
            else:
                self._close("refused at the cap (every connection has a request in the app)")

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self._waiting_since is not None:
            self._arm_deadline()  # the first bytes of a request on a kept-alive connection
        super().data_received(data)
        self._follow_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request at once
        if self._waiting_since is None:
            self._waiting_since = self.loop.time()
        self._follow_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_deadline()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """h11 could not parse the request, or its head is over ``max_header_bytes``: answer
        Google's JSON error (uvicorn's own is plain text) and close."""
        text = (
            "invalid HTTP request: malformed, or its request line and headers are over "
            f"{self.settings.max_header_bytes} bytes"
        )
        body = json.dumps(error_body(HTTPStatus.BAD_REQUEST, text)).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        try:
            for event in (
                h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                h11.Data(data=body),
                h11.EndOfMessage(),
            ):
                self.transport.write(self.conn.send(event))
        except h11.LocalProtocolError:  # a response had started already: just close
            pass
        self.transport.close()

    def _follow_request(self) -> None:
        """Once a request has arrived whole (and until its answer is sent), no deadline runs."""
        cycle = self.cycle
        if cycle is not None and not cycle.more_body and not cycle.response_complete:
            self._waiting_since = None
            self._disarm_deadline()

    def _arm_deadline(self) -> None:
        self._disarm_deadline()
        self._deadline = self.loop.call_later(
            self.settings.request_timeout_s,
            self._close,
            f"without a whole request within {self.settings.request_timeout_s:g} s",
        )

    def _disarm_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _close(self, reason: str) -> None:
        self._disarm_deadline()
        if not self.transport.is_closing():
            self.closed.closed(reason)
            self.transport.close()


def guarded_protocol(settings: ServerSettings) -> type[H11Protocol]:
    """The HTTP protocol class for uvicorn, with ``settings``' limits."""
    return type(
        "GuardedH11Protocol",
        (_GuardedH11Protocol,),
        {"settings": settings, "closed": _ClosedConnections()},
    )


def connection_cap(wanted: int) -> int:
    """``wanted``, or fewer where the process may not open that many descriptors even after
    raising its soft limit to the hard one (then the accept loop would fail instead)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft == resource.RLIM_INFINITY or wanted + RESERVED_DESCRIPTORS <= soft:
        return wanted
    cap = max(1, soft - RESERVED_DESCRIPTORS)
    logger.warning(
        "at most %d connections, not %d: the process may open %d file descriptors",
        cap,
        wanted,
        soft,
    )
    return cap


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
    config = logging_config(settings.log_level, route_native_stderr())
    logging.config.dictConfig(config)
    logging.captureWarnings(True)  # Python's warnings as JSON lines too
    max_connections = connection_cap(settings.max_connections)
    if max_connections != settings.max_connections:
        settings = dataclasses.replace(settings, max_connections=max_connections)
    protocol = guarded_protocol(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            http=protocol,
            ws="none",
            log_config=config,
            access_log=False,  # the app logs every request itself, as JSON
            timeout_keep_alive=settings.keep_alive_s,
            timeout_graceful_shutdown=settings.graceful_timeout_s,
            h11_max_incomplete_event_size=settings.max_header_bytes,
            lifespan="on",
            server_header=False,
        )
    )

    def stop() -> None:
        server.should_exit = True

    app.state.on_load_error = stop
    on_listening(*sock.getsockname()[:2])
    server.run(sockets=[sock])
    protocol.closed.flush()
    return 1 if app.state.load_error else 0
