"""Turn kfp.local's verbose console output into one line per step event, and keep the full log.

kfp.local prints each task's executor input, output and logs to stdout; a person running the
pipeline wants to see which step runs, what it says, how long it took and, on failure, why.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
import time
from collections.abc import Iterator
from typing import TextIO

from components.lib.storage import redact_text

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TASK_START = re.compile(r"Executing task '([^']+)'")
_CACHE_HIT = re.compile(r"Task '?([\w-]+)'? cache hit")
_TASK_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
_EXECUTOR_LOG = re.compile(r"^\[KFP Executor \S+ \S+ (\w+)\]: (.*)$")
_EXECUTOR_CHATTER = (
    "Looking for component",
    "Loading KFP component",
    "Got executor_input",
    "Wrote executor output",
    # tf.distribute reports every dataset it shards; a step prints it 20 to 30 times.
    "Sharding callback duration",
)
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*")


class StepProgress(io.TextIOBase):
    """A stdout replacement: writes everything to ``log``, reports steps to ``console``."""

    def __init__(self, log: TextIO, console: TextIO = sys.stderr, verbose: bool = False) -> None:
        super().__init__()
        self.log = log
        self.console = console
        self.verbose = verbose
        self.step_seconds: dict[str, float] = {}
        self.failed_step: str | None = None
        self.failure: list[str] = []
        self._buffer = ""
        self._current: str | None = None
        self._started = 0.0
        self._task_lines: list[str] = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        """Whole lines go on, each with its URIs redacted (a step echoes its ``data_uri``,
        signed URL or password included); a partial line waits for its end."""
        self._buffer += text
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            self._emit(redact_text(line) + "\n")
        return len(text)

    def _emit(self, line: str) -> None:
        self.log.write(line)
        if self.verbose:
            self.console.write(line)
        self._line(_ANSI.sub("", line.rstrip("\n")))

    def flush(self) -> None:
        self.log.flush()
        self.console.flush()

    @contextlib.contextmanager
    def capturing(self) -> Iterator[None]:
        """Route stdout and the root logger (where kfp.local reports cache hits) through here."""
        root = logging.getLogger()
        handler = logging.StreamHandler(self)
        level = root.level
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            with contextlib.redirect_stdout(self):
                yield
        finally:
            root.removeHandler(handler)
            root.setLevel(level)
            if self._buffer:
                self._emit(redact_text(self._buffer))
                self._buffer = ""

    def _say(self, text: str) -> None:
        if not self.verbose:
            print(text, file=self.console, flush=True)

    def _line(self, line: str) -> None:
        if match := _CACHE_HIT.search(line):
            self._say(f"> {match.group(1)}: cached, inputs unchanged")
        elif match := _TASK_START.search(line):
            self._current, self._started, self._task_lines = match.group(1), time.monotonic(), []
            self._say(f"> {self._current}")
        elif match := _TASK_END.search(line):
            step, status = match.groups()
            seconds = time.monotonic() - self._started
            self.step_seconds[step] = round(seconds, 1)
            self._current = None
            if status == "SUCCESS":
                self._say(f"  {step} done in {seconds:.1f} s")
            else:
                self.failed_step = step
                self.failure = _exception_lines(self._task_lines)
                self._say(f"  {step} FAILED after {seconds:.1f} s")
        elif self._current is not None:
            inner = line[4:] if line.startswith("    ") else line
            self._task_lines.append(inner)
            match = _EXECUTOR_LOG.match(inner.lstrip())
            if match and not match.group(2).startswith(_EXECUTOR_CHATTER):
                level, message = match.groups()
                prefix = "" if level == "INFO" else f"{level}: "
                self._say(f"  {self._current}: {prefix}{message}")


def _exception_lines(lines: list[str]) -> list[str]:
    """The final exception of a traceback: its ``Type: message`` line and what follows."""
    starts = [index for index, line in enumerate(lines) if _EXCEPTION_LINE.match(line)]
    if not starts:
        return [line for line in lines if line.strip()][-5:]
    return [line for line in lines[starts[-1] :] if line.strip()]
