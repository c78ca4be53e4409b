"""What the benchmark scripts share: process memory from /proc, percentiles, targets and output.

Memory is read from Linux's ``/proc/<pid>/status``: ``VmRSS`` (resident now) and ``VmHWM`` (the
process's peak resident size, kept by the kernel, so a sampler cannot miss a short peak of a
process it sees alive).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from components.lib.serving.infra import percentile as percentile  # the benchmarks' too

MIB = 1024**2
GIB = 1024**3


def progress(message: str) -> None:
    """A progress line on stderr, so that stdout keeps only the figures and the final JSON."""
    print(message, file=sys.stderr, flush=True)


def memory_status(pid: int | str = "self") -> dict[str, int]:
    """``{"rss": ..., "peak_rss": ...}`` of a process in bytes (VmRSS and VmHWM)."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values["rss" if name == "VmRSS" else "peak_rss"] = int(rest.split()[0]) * 1024
    return values


def reset_peak_rss() -> None:
    """Restart this process's peak (VmHWM) from its current RSS (Linux 4.0+), so that the peak
    read later is that of the work in between, not of the imports before it."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


@dataclass
class MemoryUse:
    """RSS of this process before some work (after its imports) and at the peak of that work."""

    baseline_bytes: int = 0
    peak_bytes: int = 0

    @property
    def growth_bytes(self) -> int:
        return self.peak_bytes - self.baseline_bytes


@contextlib.contextmanager
def measure_memory() -> Iterator[MemoryUse]:
    """``with measure_memory() as memory: work()`` fills ``memory`` with the work's RSS figures."""
    reset_peak_rss()
    memory = MemoryUse(baseline_bytes=memory_status()["rss"])
    try:
        yield memory
    finally:
        memory.peak_bytes = memory_status()["peak_rss"]


def _children(pid: int) -> list[int]:
    children: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as file:
                children += [int(child) for child in file.read().split()]
    except OSError:  # the process ended while we looked
        pass
    return children


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, their children, ...)."""
    found, pending = [], _children(pid)
    while pending:
        child = pending.pop()
        found.append(child)
        pending += _children(child)
    return found


def command_line(pid: int) -> list[str]:
    """The arguments a live process was started with; empty once it has ended."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return [part.decode(errors="replace") for part in file.read().split(b"\0") if part]
    except OSError:
        return []


@dataclass
class ProcessTreePeaks:
    """Samples a process tree and keeps, per group of processes, the peak RSS of the group.

    ``group_of(pid, command_line)`` names the group of each process (None: not counted). A group's
    peak is the largest sum, over one sample, of its live processes' own peaks (VmHWM): exact for
    a group of one process, an upper bound for several, and never missed between samples.
    """

    root_pid: int
    group_of: Callable[[int, list[str]], str | None]
    interval_s: float = 0.1
    peaks: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        totals: dict[str, int] = {}
        for pid in [self.root_pid, *descendants(self.root_pid)]:
            group = self.group_of(pid, command_line(pid))
            if group is None:
                continue
            try:
                totals[group] = totals.get(group, 0) + memory_status(pid)["peak_rss"]
            except (OSError, KeyError):  # ended, or a zombie without memory figures
                continue
        for group, total in totals.items():
            self.peaks[group] = max(self.peaks.get(group, 0), total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> ProcessTreePeaks:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; infinite when the denominator is 0 (nothing to compare)."""
    return numerator / denominator if denominator else math.inf


@dataclass(frozen=True)
class Target:
    """A measured figure and the bound the issue sets on it."""

    name: str
    measured: float
    bound: float
    at_least: bool  # True: met when measured >= bound; False: met when measured <= bound
    unit: str = ""

    @property
    def met(self) -> bool:
        return self.measured >= self.bound if self.at_least else self.measured <= self.bound

    def line(self) -> str:
        relation = ">=" if self.at_least else "<="
        verdict = "met" if self.met else "MISSED"
        return (
            f"target {self.name}: {self.measured:.4g}{self.unit} "
            f"(needs {relation} {self.bound:.4g}{self.unit}): {verdict}"
        )


def run_in_threads(client: Callable[[], None], count: int) -> float:
    """Run ``client`` in ``count`` threads at once; the seconds until the last one finished."""
    threads = [threading.Thread(target=client) for _ in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows as left-aligned text columns under their headers."""
    lines = [[str(cell) for cell in line] for line in [headers, *rows]]
    widths = [max(len(cell) for cell in column) for column in zip(*lines, strict=True)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def machine() -> dict[str, Any]:
    """What the figures were measured on, and how busy it was (1-minute load average) when
    they were printed: other work on the machine slows every figure down."""
    with open("/proc/cpuinfo") as cpuinfo:
        models = [line.split(":", 1)[1] for line in cpuinfo if line.startswith("model name")]
    model = models[0].strip() if models else platform.processor()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def finish(benchmark: str, figures: dict[str, Any], targets: Sequence[Target]) -> int:
    """Print each target's verdict and then one JSON line of everything; 1 if a target is missed."""
    for target in targets:
        print(target.line())
    print(
        json.dumps(
            {
                "benchmark": benchmark,
                "machine": machine(),
                **figures,
                "targets": [{**asdict(target), "met": target.met} for target in targets],
                "all_targets_met": all(target.met for target in targets),
            }
        )
    )
    return 0 if all(target.met for target in targets) else 1
