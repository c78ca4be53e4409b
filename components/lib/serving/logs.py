"""Structured logs: one JSON object per line, with the field names Cloud Logging reads
(``severity``, ``message``, ``httpRequest``), so that logs of a Vertex AI endpoint are searchable
by status, latency and model version.

TensorFlow's C++ code, absl and libjpeg write plain text to file descriptor 2 themselves, past
Python's logging; ``route_native_stderr`` turns those lines into JSON records too.
"""

from __future__ import annotations

import atexit
import datetime
import json
import logging
import os
import re
import threading
from typing import Any, TextIO

FIELDS = "fields"  # logger.info(..., extra={FIELDS: {...}}) adds these keys to the line
NATIVE_LOGGER = "native"  # the logger of the lines that native code writes to stderr

# The severity letter of glog/absl lines ("W0000 00:00:..." or "2025-01-01 12:00:00.1: W tensor...")
_NATIVE_SEVERITY = re.compile(r"^(?:\d{4}-\d\d-\d\d [\d:.]+: )?([IWEF])[\d ]")
_SEVERITIES = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "severity": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, FIELDS, {}),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def logging_config(level: str = "INFO", stream: TextIO | None = None) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` (and uvicorn ``log_config``) that writes every logger,
    uvicorn's included, as JSON lines to ``stream`` (default: stderr)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": stream or "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            "uvicorn": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.error": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": True},
        },
    }


def native_severity(line: str) -> int:
    """The level of a line that native code wrote: glog's letter, else WARNING."""
    match = _NATIVE_SEVERITY.match(line)
    return _SEVERITIES[match.group(1)] if match else logging.WARNING


def route_native_stderr() -> TextIO:
    """Send what anything writes to file descriptor 2 through a pipe, each line logged as a
    record of the ``native`` logger, and return a stream on the real stderr for the JSON lines.

    At exit, descriptor 2 is restored and the last lines are logged before the process ends.
    """
    real_stderr = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    native = logging.getLogger(NATIVE_LOGGER)

    def forward() -> None:
        with open(read_end, "rb") as pipe:
            for raw in pipe:
                line = raw.decode(errors="replace").rstrip()
                if line.strip():
                    native.log(native_severity(line), "%s", line)

    reader = threading.Thread(target=forward, name="native-stderr", daemon=True)
    reader.start()

    def restore() -> None:
        os.dup2(real_stderr, 2)  # closes the pipe's last writer: the reader sees its end
        reader.join(timeout=5)

    atexit.register(restore)
    return open(real_stderr, "w", buffering=1, closefd=False)
