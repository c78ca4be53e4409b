"""Whole pipeline: wall time and peak memory of each step of a local run, cold and then warm.

Runs ``python -m pipeline.run --local --json`` twice on one fresh state folder: cold (nothing
cached) and warm (the same command again: the KFP cache skips download, validate, preprocess
and train). Times come from the run's own ``step_seconds`` and the wall clock of each command.
Targets: the warm run under a quarter of the cold one, no step over 4 GiB, and the infra
validation step (the model served and measured) under 15% of the cold run's wall time.

kfp.local runs every step as a subprocess (``sh`` and then ``python -m kfp.dsl.executor_main
... --function_to_execute <step>``). A sampler thread walks the run's process tree every 0.1 s
and attributes each process to its step by that argument; a step's peak is the largest sum of
its processes' own peaks (VmHWM, kept by the kernel, so a short spike between two samples is
not missed while the process lives). The kernel's figure for the largest single process of the
whole tree (``wait4``'s ``ru_maxrss``) is printed beside them as a cross-check.

    python -m bench.pipeline_steps --data-uri ../shared/data/beers
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import GIB, MIB, ProcessTreePeaks, Target, finish, format_table, progress, ratio

TARGET_WARM_SHARE = 0.25
TARGET_STEP_PEAK_BYTES = 4 * GIB
TARGET_INFRA_SHARE = 0.15
INFRA_STEP = "infra-validate"
ORCHESTRATOR = "(pipeline.run itself)"
STEP_ARGUMENT = "--function_to_execute"
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class RunResult:
    """One measured run of the pipeline command."""

    label: str
    wall_seconds: float
    step_seconds: dict[str, float]
    peak_rss_bytes: dict[str, int]  # per step, and ORCHESTRATOR
    largest_process_bytes: int  # the kernel's peak of the largest process in the tree
    accuracy: float | None = None  # the new model's on the eval split

    @property
    def step_peaks(self) -> dict[str, int]:
        return {name: peak for name, peak in self.peak_rss_bytes.items() if name != ORCHESTRATOR}


def step_of(command: list[str]) -> str | None:
    """The pipeline step (task name) a process runs for, from its ``--function_to_execute``."""
    if STEP_ARGUMENT in command[:-1]:
        return command[command.index(STEP_ARGUMENT) + 1].replace("_", "-")
    return None


def pipeline_command(data_uri: str | None, state_dir: str, params: list[str]) -> list[str]:
    """The local run exactly as a user types it, with the JSON summary at the end."""
    command = [sys.executable, "-m", "pipeline.run", "--local", "--state-dir", state_dir, "--json"]
    if data_uri:
        command += ["--data-uri", data_uri]
    for param in params:
        command += ["--param", param]
    return command


def run_measured(command: list[str], label: str, interval_s: float = 0.1) -> RunResult:
    """Run ``command`` (its last stdout line: JSON with ``step_seconds``), echo its stderr as
    progress, and measure its wall time and the peak RSS of each step's processes."""
    with tempfile.TemporaryFile("w+") as stdout:
        started = time.perf_counter()
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=stdout, stderr=subprocess.PIPE, text=True
        )

        def group_of(pid: int, process_command: list[str]) -> str | None:
            return ORCHESTRATOR if pid == process.pid else step_of(process_command)

        with ProcessTreePeaks(process.pid, group_of, interval_s) as peaks:
            assert process.stderr is not None
            for line in process.stderr:
                progress(f"  {label} | {line.rstrip()}")
            _, status, usage = os.wait4(process.pid, 0)
        wall_seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise RuntimeError(f"{label} run failed with exit status {process.returncode}")
        stdout.seek(0)
        summary = json.loads(stdout.read().splitlines()[-1])
    return RunResult(
        label,
        wall_seconds,
        summary["step_seconds"],
        dict(peaks.peaks),
        usage.ru_maxrss * 1024,
        summary.get("accuracy"),
    )


def evaluate(cold: RunResult, warm: RunResult) -> tuple[str, dict[str, object], list[Target]]:
    """A table of both runs step by step, the figures, and the issue's targets on them."""
    names = list(dict.fromkeys([*cold.step_seconds, *cold.step_peaks, *warm.step_seconds]))

    def seconds(run: RunResult, name: str) -> str:
        return f"{run.step_seconds[name]:.1f}" if name in run.step_seconds else "cached"

    def peak(run: RunResult, name: str) -> str:
        return f"{run.peak_rss_bytes[name] / MIB:.0f}" if name in run.peak_rss_bytes else "-"

    rows = [
        (name, seconds(cold, name), seconds(warm, name), peak(cold, name), peak(warm, name))
        for name in names
    ]
    rows.append((ORCHESTRATOR, "", "", peak(cold, ORCHESTRATOR), peak(warm, ORCHESTRATOR)))
    wall = ("whole command (wall)", f"{cold.wall_seconds:.1f}", f"{warm.wall_seconds:.1f}", "", "")
    rows.append(wall)
    table = format_table(
        ("step", "cold s", "warm s", "cold peak RSS MiB", "warm peak RSS MiB"), rows
    )
    step_peaks = {**cold.step_peaks}
    for name, value in warm.step_peaks.items():
        step_peaks[name] = max(value, step_peaks.get(name, 0))
    largest_step = max(step_peaks, key=step_peaks.__getitem__) if step_peaks else "none"
    warm_share = ratio(warm.wall_seconds, cold.wall_seconds)
    infra_share = ratio(cold.step_seconds.get(INFRA_STEP, 0.0), cold.wall_seconds)
    figures: dict[str, object] = {
        "runs": {run.label: asdict(run) for run in (cold, warm)},
        "warm_share": warm_share,
        "infra_validation_share": infra_share,
        "largest_step": largest_step,
        "largest_step_peak_rss_bytes": step_peaks.get(largest_step, 0),
    }
    targets = [
        Target("warm wall time / cold wall time", warm_share, TARGET_WARM_SHARE, False),
        Target(
            f"largest step peak RSS ({largest_step})",
            step_peaks.get(largest_step, 0) / GIB,
            TARGET_STEP_PEAK_BYTES / GIB,
            False,
            " GiB",
        ),
        Target(f"{INFRA_STEP} step / cold wall time", infra_share, TARGET_INFRA_SHARE, False),
    ]
    return table, figures, targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pipeline_steps",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data-uri", help="images to train on (default: the demo dataset)")
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="an empty or absent folder for the runs (default: a temporary one, removed after)",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a pipeline parameter passed on to both runs (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.state_dir and args.state_dir.exists() and any(args.state_dir.iterdir()):
        parser.error(f"--state-dir {args.state_dir} is not empty: the cold run needs a fresh one")

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as scratch:
        state_dir = str(args.state_dir or Path(scratch, "state"))
        command = pipeline_command(args.data_uri, state_dir, args.param)
        progress(f"running {' '.join(command[1:])} twice: cold, then warm")
        cold = run_measured(command, "cold")
        warm = run_measured(command, "warm")
    table, figures, targets = evaluate(cold, warm)
    figures["accuracy"] = {"cold": cold.accuracy, "warm": warm.accuracy}
    print(table)
    print(f"eval accuracy of the trained model: {cold.accuracy} (cold), {warm.accuracy} (warm)")
    print(
        f"warm run {warm.wall_seconds:.1f} s = {figures['warm_share']:.1%} of the cold run's "
        f"{cold.wall_seconds:.1f} s; largest step {figures['largest_step']} peaked at "
        f"{figures['largest_step_peak_rss_bytes'] / GIB:.2f} GiB (largest single process, "
        f"kernel's account: {max(cold.largest_process_bytes, warm.largest_process_bytes) / GIB:.2f}"
        " GiB)"
    )
    settings = {"data_uri": args.data_uri or "demo dataset", "params": args.param}
    return finish("pipeline_steps", {**settings, **figures}, targets)


if __name__ == "__main__":
    sys.exit(main())
