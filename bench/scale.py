"""Scale: each pipeline step's seconds per 1,000 images and peak RSS at several dataset sizes.

Makes N distinct images from the shared beer photos: the photos themselves, then variants of
each (a random crop, a mirror flip, colour and brightness changes, seeded by the variant's
index), each in its photo's split and class, as JPEG at the photos' 160x160 px. Then runs the
local pipeline on each size exactly as ``bench.pipeline_steps`` does (``python -m pipeline.run
--local``, a fresh state folder, every step's time from the run and its peak RSS sampled from its
processes), with ``epochs=1 fine_tune_epochs=1`` unless ``--param`` says otherwise.

Every step has a fixed start-up that no image causes (a process, TensorFlow's import, building
the model: 5 to 20 s here). A first run at ``--base-size`` images measures it, and a step's cost
at N images is its time beyond that: (t(N) - t(base)) / (N - base), per 1,000 images. The targets
(issue 17), between the smallest and the largest of ``--sizes``, for every step that touches the
data:

- peak RSS flat: RSS(largest) / RSS(smallest) <= 1.15;
- cost per image flat: cost(largest) / cost(smallest) <= 1.20, judged where the step's time
  beyond start-up at the smallest size is at least MIN_TIMED_SECONDS (shorter is noise here).
  The bound is on growth, which is what breaks linear time; a cost that falls with size (start-up
  work the base run does not show, such as tracing per dataset, or a busier machine during the
  smaller run) is printed, not failed.

    python -m bench.scale --sizes 2000,20000       # about 70 min on 2 busy cores
    python -m bench.scale --sizes 500,2000 --keep /tmp/scale   # a quick look, keeps the data
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.common import MIB, Target, finish, format_table, progress, ratio
from bench.pipeline_steps import RunResult, pipeline_command, run_measured

DATA_STEPS = (
    "download-data",
    "validate-data",
    "preprocess-data",
    "extract-features",
    "train-model",
    "evaluate-model",
)
TARGET_RSS_GROWTH = 1.15
TARGET_COST_GROWTH = 0.20
MIN_TIMED_SECONDS = 5.0
DEFAULT_PARAMS = ("epochs=1", "fine_tune_epochs=1")
IMAGE_SIZE = 160
SPLITS = ("train", "eval")


def source_photos(data_dir: Path) -> list[tuple[str, str, Path]]:
    """``(split, class, path)`` of every photo of ``data_dir``, each split and class spread
    evenly over the order, so that the first n photos hold every split and class in proportion."""
    spread = []
    for split in SPLITS:
        for class_dir in sorted((data_dir / split).iterdir()):
            paths = sorted(
                path
                for path in class_dir.iterdir()
                if path.suffix.lower() in (".jpg", ".jpeg", ".png")
            )
            spread += [
                ((rank + 0.5) / len(paths), split, class_dir.name, path)
                for rank, path in enumerate(paths)
            ]
    if not spread:
        raise SystemExit(f"no photos under {data_dir}/{{train,eval}}/<class>/")
    return [(split, name, path) for _, split, name, path in sorted(spread)]


def variant(photo: Path, index: int) -> bytes:
    """The ``index``-th variant of a photo as JPEG: index 0 is the photo itself, others a
    seeded random crop (70 to 95% of each side), maybe mirrored, with colour and brightness
    changed by up to 25%, at IMAGE_SIZE px."""
    import io

    from PIL import Image, ImageEnhance, ImageOps

    if index == 0:
        return photo.read_bytes()
    rng = random.Random(f"{photo.name}-{index}")
    with Image.open(photo) as opened:
        image = opened.convert("RGB")
    width, height = image.size
    crop_w, crop_h = int(width * rng.uniform(0.7, 0.95)), int(height * rng.uniform(0.7, 0.95))
    left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
    image = image.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.75, 1.25))
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.75, 1.25))
    buffer = io.BytesIO()
    image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR).save(
        buffer, format="JPEG", quality=90
    )
    return buffer.getvalue()


def _write_images(jobs: list[tuple[Path, int, Path]]) -> None:
    for photo, index, target in jobs:
        target.write_bytes(variant(photo, index))


def make_images(data_dir: Path, destination: Path, count: int) -> Path:
    """``count`` distinct images in ``destination/{train,eval}/<class>/``, made from the photos
    of ``data_dir`` on every core; image i is variant i // P of photo i % P (P photos)."""
    photos = source_photos(data_dir)
    jobs = []
    for number in range(count):
        split, class_name, photo = photos[number % len(photos)]
        index = number // len(photos)
        folder = destination / split / class_name
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((photo, index, folder / f"{photo.stem}-{index:04d}.jpg"))
    workers = os.cpu_count() or 1
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_images, [jobs[start::workers] for start in range(workers)]))
    return destination


@dataclass(frozen=True)
class SizeResult:
    """One pipeline run on ``images`` images."""

    images: int
    run: RunResult

    def seconds(self, step: str) -> float | None:
        return self.run.step_seconds.get(step)

    def peak_mib(self, step: str) -> float | None:
        peak = self.run.peak_rss_bytes.get(step)
        return peak / MIB if peak else None


def cost_per_1000(result: SizeResult, base: SizeResult, step: str) -> float | None:
    """Seconds per 1,000 images of ``step`` beyond its start-up (its time in the base run)."""
    seconds, base_seconds = result.seconds(step), base.seconds(step)
    if seconds is None or base_seconds is None or result.images <= base.images:
        return None
    return (seconds - base_seconds) / (result.images - base.images) * 1000


def evaluate(
    base: SizeResult, results: list[SizeResult]
) -> tuple[str, dict[str, object], list[Target]]:
    """The side-by-side table, the figures, and the targets between the smallest and largest."""
    first, last = results[0], results[-1]
    steps = list(dict.fromkeys([*DATA_STEPS, *last.run.step_seconds]))

    def cell(value: float | None, digits: int = 2) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    headers = ["step"]
    headers += [f"s @{r.images}" for r in [base, *results]]
    headers += [f"s/1000 @{r.images}" for r in results]
    headers += [f"peak MiB @{r.images}" for r in results]
    rows, targets = [], []
    figures: dict[str, object] = {"base_images": base.images, "steps": {}}
    for step in steps:
        costs = [cost_per_1000(result, base, step) for result in results]
        peaks = [result.peak_mib(step) for result in results]
        rows.append(
            [
                step,
                *[cell(r.seconds(step), 1) for r in [base, *results]],
                *[cell(cost) for cost in costs],
                *[cell(peak, 0) for peak in peaks],
            ]
        )
        figures["steps"][step] = {  # type: ignore[index]
            str(r.images): {"seconds": r.seconds(step), "cost_per_1000": c, "peak_mib": p}
            for r, c, p in zip(results, costs, peaks, strict=True)
        }
        if step not in DATA_STEPS:
            continue
        if peaks[0] and peaks[-1]:
            growth = ratio(peaks[-1], peaks[0])
            targets.append(
                Target(
                    f"{step} peak RSS @{last.images} / @{first.images}",
                    growth,
                    TARGET_RSS_GROWTH,
                    False,
                )
            )
        timed = (first.seconds(step) or 0) - (base.seconds(step) or 0)
        if costs[0] and costs[-1] and timed >= MIN_TIMED_SECONDS:
            targets.append(
                Target(
                    f"{step} cost per image @{last.images} / @{first.images}",
                    ratio(costs[-1], costs[0]),
                    1 + TARGET_COST_GROWTH,
                    False,
                )
            )
    walls = ["whole run (wall)", *[cell(r.run.wall_seconds, 1) for r in [base, *results]]]
    rows.append(walls + [""] * (len(headers) - len(walls)))
    figures["wall_seconds"] = {str(r.images): r.run.wall_seconds for r in [base, *results]}
    return format_table(headers, rows), figures, targets


def run_size(data_dir: Path, images: int, work: Path, params: list[str], keep: bool) -> SizeResult:
    """Make ``images`` images and run the local pipeline on them, measured."""
    data = work / f"data-{images}"
    if not data.exists():
        progress(f"making {images} images in {data} ...")
        started = time.perf_counter()
        make_images(data_dir, data, images)
        progress(f"  made in {time.perf_counter() - started:.1f} s")
    state = work / f"state-{images}"
    shutil.rmtree(state, ignore_errors=True)
    command = pipeline_command(str(data), str(state), params)
    progress(f"{images} images: {' '.join(command[1:])}")
    result = SizeResult(images, run_measured(command, f"{images}"))
    if not keep:
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--sizes", default="2000,20000", help="image counts, comma-separated (%(default)s)"
    )
    parser.add_argument(
        "--base-size", type=int, default=100, help="images of the start-up run (%(default)s)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("BEER_DATA_DIR", "../shared/data/beers")),
        help="photos to make the images from (default: $BEER_DATA_DIR or ../shared/data/beers)",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"a pipeline parameter for every run (repeatable; default {' '.join(DEFAULT_PARAMS)})",
    )
    parser.add_argument(
        "--keep", type=Path, help="make and keep the images and runs in this folder"
    )
    args = parser.parse_args(argv)
    sizes = sorted(int(size) for size in args.sizes.split(","))
    if len(sizes) < 2 or args.base_size >= sizes[0]:
        parser.error("--sizes needs two or more sizes, each larger than --base-size")
    params = [*DEFAULT_PARAMS, *args.param]

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as scratch:
        work = args.keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        runs = [
            run_size(args.data_dir, size, work, params, bool(args.keep))
            for size in [args.base_size, *sizes]
        ]
    table, figures, targets = evaluate(runs[0], runs[1:])
    print(table)
    print(
        f"s/1000: seconds per 1,000 images beyond each step's start-up (its time at "
        f"{args.base_size} images); pipeline parameters: {' '.join(params)}"
    )
    return finish("scale", {"sizes": sizes, "params": params, **figures}, targets)


if __name__ == "__main__":
    sys.exit(main())
