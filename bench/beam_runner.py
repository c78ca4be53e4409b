"""Preprocess and features in their own step against the same tasks on Apache Beam's DirectRunner.

Makes N distinct images (``bench.scale``'s variants of the beer photos), then runs
``preprocess_dataset`` and ``extract_features`` twice, each time in a fresh process: in-step
(``beam_args`` empty, the pipeline's default) and through Beam (``--beam-args``, by default the
DirectRunner with 2 threads in the process). Times are each call's own; memory is the process's
peak RSS (``wait4``'s ``ru_maxrss``: the DirectRunner in threads runs inside that process).
Both write the same files (tests/test_records.py checks that byte for byte).

Targets: the Beam runner costs at most 25% more time and 15% more memory than in-step here;
on Dataflow the same tasks spread over many machines instead.

    python -m bench.beam_runner --images 2000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import MIB, Target, finish, format_table, progress, ratio
from bench.scale import make_images

ROOT = Path(__file__).resolve().parent.parent
DIRECT_RUNNER = "--runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_threading"
TARGET_TIME = 1.25
TARGET_MEMORY = 1.15
SIDE = """
import json, sys, time
from components.lib.data.records import preprocess_dataset
from components.lib.modelling.features import extract_features
data, work, image_size, beam_args = sys.argv[1:]
started = time.perf_counter()
dataset = preprocess_dataset(data, work + "/records", int(image_size), validation_fraction=0.1,
                             beam_args=beam_args)
preprocessed = time.perf_counter()
extract_features(dataset, work + "/features", beam_args=beam_args)
done = time.perf_counter()
print(json.dumps({"preprocess_seconds": preprocessed - started,
                  "features_seconds": done - preprocessed}))
"""


def run_side(data: Path, work: Path, image_size: int, beam_args: str) -> dict[str, float]:
    """Preprocess and features in a fresh process; their seconds and the process's peak RSS."""
    with tempfile.TemporaryFile("w+") as stdout:
        process = subprocess.Popen(
            [sys.executable, "-c", SIDE, str(data), str(work), str(image_size), beam_args],
            cwd=ROOT,
            stdout=stdout,
        )
        _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"side {beam_args or 'in-step'} failed")
        stdout.seek(0)
        figures = json.loads(stdout.read().splitlines()[-1])
    return {**figures, "peak_rss_mib": usage.ru_maxrss * 1024 / MIB}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.beam_runner",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--images", type=int, default=2000, help="(%(default)s)")
    parser.add_argument("--image-size", type=int, default=224, help="pixels (%(default)s)")
    parser.add_argument("--beam-args", default=DIRECT_RUNNER, help="(%(default)s)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("BEER_DATA_DIR", "../shared/data/beers")),
        help="photos to make the images from (default: $BEER_DATA_DIR or ../shared/data/beers)",
    )
    args = parser.parse_args(argv)

    sides = {}
    with tempfile.TemporaryDirectory(prefix="bench-beam-") as scratch:
        progress(f"making {args.images} images ...")
        data = make_images(args.data_dir, Path(scratch, "data"), args.images)
        for label, beam_args in (("in-step", ""), ("beam", args.beam_args)):
            progress(f"{label}: preprocess and features ...")
            work = Path(scratch, label)
            work.mkdir()
            sides[label] = run_side(data, work, args.image_size, beam_args)
    print(
        format_table(
            ["runs as", "preprocess s", "features s", "peak RSS MiB"],
            [
                [
                    label if label == "in-step" else f"Beam ({args.beam_args})",
                    f"{side['preprocess_seconds']:.1f}",
                    f"{side['features_seconds']:.1f}",
                    f"{side['peak_rss_mib']:.0f}",
                ]
                for label, side in sides.items()
            ],
        )
    )

    def total(side: dict[str, float]) -> float:
        return side["preprocess_seconds"] + side["features_seconds"]

    beam, here = sides["beam"], sides["in-step"]
    targets = [
        Target("Beam / in-step, time", ratio(total(beam), total(here)), TARGET_TIME, False),
        Target(
            "Beam / in-step, peak RSS",
            ratio(beam["peak_rss_mib"], here["peak_rss_mib"]),
            TARGET_MEMORY,
            False,
        ),
    ]
    settings = {"images": args.images, "image_size": args.image_size, "beam_args": args.beam_args}
    return finish("beam_runner", {**settings, "sides": sides}, targets)


if __name__ == "__main__":
    sys.exit(main())
