"""What each pipeline parameter accepts: the one table of allowed values.

``python -m pipeline.run`` checks a run's values against it before anything runs, and so does
the pipeline's first step (``components/parameters.py``), so that a run started from the console
fails in seconds too; each parameter's console description states its range (a test holds the
descriptions to this table). Every problem is reported at once, in one line.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from components.lib.modelling.variants import BACKBONES
from components.lib.targets.base import LOCAL, TARGETS

MIN_FREE_BYTES = 1 << 30
"""Free space a local run needs in its state folder: the copies of the images, their TFRecords
and features, the model and its registered copy (the demo takes a few hundred megabytes)."""


@dataclass(frozen=True)
class Allowed:
    """A number from ``low`` to ``high`` (None: no bound), each bound included unless
    ``*_open``, or one of ``also``; a whole number when ``whole``."""

    low: float | None
    high: float | None
    whole: bool = False
    low_open: bool = False
    high_open: bool = False
    also: tuple[float, ...] = ()

    def text(self) -> str:
        """The range in words, as the console descriptions quote it."""
        low, high = _number(self.low), _number(self.high)
        if self.high is None:
            words = f"more than {low}" if self.low_open else f"at least {low}"
        elif self.low_open and self.high_open:
            words = f"more than {low} and less than {high}"
        elif self.low_open:
            words = f"more than {low}, at most {high}"
        elif self.high_open:
            words = f"{low} or more, less than {high}"
        else:
            words = f"{low} to {high}"
        if self.also:
            words = ", ".join(_number(value) for value in self.also) + f", or {words}"
        return ("a whole number, " if self.whole else "") + words

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if not math.isfinite(value) or (self.whole and value != int(value)):
            return False
        if value in self.also:
            return True
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:g}" if value != int(value) else str(int(value))


SHARE = Allowed(0, 1)
LEARNING_RATE = Allowed(0, 1, low_open=True)
FRACTION_BELOW_1 = Allowed(0, 1, high_open=True)
EPOCHS = Allowed(0, 1000, whole=True)
RANGES: dict[str, Allowed] = {
    "eval_fraction": Allowed(0, 1, low_open=True, high_open=True),
    "min_image_size": Allowed(1, 4096, whole=True),
    "max_unusable_share": SHARE,
    "image_size": Allowed(32, 1024, whole=True, also=(0,)),
    "epochs": Allowed(1, 1000, whole=True),
    "learning_rate": LEARNING_RATE,
    "fine_tune_epochs": EPOCHS,
    "fine_tune_learning_rate": LEARNING_RATE,
    "fine_tune_from_block": Allowed(0, max(b.num_blocks for b in BACKBONES.values()), whole=True),
    "batch_size": Allowed(1, 4096, whole=True),
    "dropout": FRACTION_BELOW_1,
    "validation_fraction": FRACTION_BELOW_1,
    "early_stopping_patience": EPOCHS,
    "label_smoothing": FRACTION_BELOW_1,
    "brightness_contrast": SHARE,
    "imbalance_ratio": Allowed(1, None),
    "seed": Allowed(0, 2**31 - 1, whole=True),
    "min_accuracy": SHARE,
    "max_regression": SHARE,
    "max_latency_p95_ms": Allowed(0, None, low_open=True),
    "max_model_size_mb": Allowed(0, None, low_open=True),
    "max_load_seconds": Allowed(0, None, low_open=True),
    "min_replicas": Allowed(1, 1000, whole=True),
    "max_replicas": Allowed(1, 1000, whole=True),
    "serving_accelerator_count": Allowed(0, 8, whole=True),
    "traffic_percentage": Allowed(1, 100, whole=True),
    "tuning_trials": Allowed(0, 1000, whole=True),
}
"""Every numeric pipeline parameter's allowed values. The bounds keep a run meaningful and
finite: an image side below 32 px vanishes in the backbone's five halvings, a share is 0 to 1."""
CHOICES: dict[str, tuple[str, ...]] = {"backbone": tuple(BACKBONES), "target": TARGETS}


def parameter_problems(values: Mapping[str, Any]) -> list[str]:
    """What is wrong with a run's parameter ``values`` (by name; those absent are not
    checked), each problem naming the parameter, its value and what it accepts. How the
    serving settings go together (replicas, accelerators) is ``Serving``'s to check."""
    problems = [
        f"{name}={values[name]!r}: expected {allowed.text()}"
        for name, allowed in RANGES.items()
        if name in values and not allowed.accepts(values[name])
    ]
    problems += [
        f"{name}={values[name]!r}: choose one of {', '.join(choices)}"
        for name, choices in CHOICES.items()
        if name in values and values[name] not in choices
    ]
    if "data_uri" in values and not str(values["data_uri"]).strip():
        problems.append("data_uri is empty: name the images (a folder, gs:// or an import file)")
    if problems:
        return problems
    block, backbone = values.get("fine_tune_from_block"), values.get("backbone")
    if block is not None and backbone is not None and block > BACKBONES[backbone].num_blocks:
        problems.append(
            f"fine_tune_from_block={block}: {backbone} has {BACKBONES[backbone].num_blocks} "
            f"blocks; expected 0 to {BACKBONES[backbone].num_blocks}"
        )
    return problems


def state_dir_problem(path: str, min_free_bytes: int = MIN_FREE_BYTES) -> str | None:
    """What keeps ``path`` from holding a local run's state (None: nothing): a file in the
    way, a folder that cannot be created or written, or less than ``min_free_bytes`` free."""
    if os.path.exists(path) and not os.path.isdir(path):
        return f"state folder {path} is a file, not a folder"
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        return f"state folder {path} cannot be written: {error.strerror or error}"
    free = shutil.disk_usage(path).free
    if free < min_free_bytes:
        return (
            f"state folder {path} has {free / 2**20:.0f} MiB free; a local run needs at least "
            f"{min_free_bytes / 2**20:.0f} MiB: free some space or pass another --state-dir"
        )
    return None


def run_problems(values: Mapping[str, Any]) -> list[str]:
    """``parameter_problems``, and for target local the state folder's (``local_state_dir``)."""
    problems = parameter_problems(values)
    state_dir = values.get("local_state_dir")
    if values.get("target") == LOCAL and state_dir and (problem := state_dir_problem(state_dir)):
        problems.append(problem)
    return problems
