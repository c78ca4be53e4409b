"""Input pipeline: tf.data over the preprocessed TFRecords versus a Python loop over the JPEGs.

The loop is the obvious way, the challenge starter code's: open each JPEG with PIL, resize it,
collect the pixels in a list and make one NumPy array of the whole dataset. The stream is what
training reads: ``records.read_split`` over what ``records.preprocess_dataset`` wrote (parallel
TFRecord reads, decoding in the graph, prefetching; the train split shuffled as in training).

Each side runs in its own fresh Python process, so neither inherits the other's memory or warm
caches of TensorFlow. Both import the same modules (TensorFlow included: the training process
that consumes the pixels has it loaded either way) before their baseline RSS is read, so their
peaks compare like for like; the growth over that baseline is the memory that reading the data
costs. ``--repeat N`` makes a dataset N times larger (every photo copied N times, for both
sides), so that a difference in memory shows. Preprocessing, paid once per dataset version
(the pipeline caches it), is timed apart.

    python -m bench.input_pipeline --data-dir ../shared/data/beers --repeat 4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import MIB, Target, finish, format_table, measure_memory, progress, ratio

SPLITS = ("train", "eval")
TARGET_SPEEDUP = 3.0
SIDES = ("preprocess", "loop", "stream")
COMPARED = ("loop", "stream")


@dataclass(frozen=True)
class SideResult:
    """One side's figures, measured in its own process."""

    side: str
    images: int
    seconds: float
    baseline_rss_bytes: int
    peak_rss_bytes: int

    @property
    def images_per_second(self) -> float:
        return ratio(self.images, self.seconds)

    @property
    def rss_growth_bytes(self) -> int:
        return self.peak_rss_bytes - self.baseline_rss_bytes


def best_of(rounds: list[SideResult]) -> SideResult:
    """One side over several rounds: its fastest time (other work on the machine only ever
    slows a round down) and its highest peak memory, with that round's baseline."""
    fastest = min(rounds, key=lambda result: result.seconds)
    largest = max(rounds, key=lambda result: result.peak_rss_bytes)
    return SideResult(
        fastest.side,
        fastest.images,
        fastest.seconds,
        largest.baseline_rss_bytes,
        largest.peak_rss_bytes,
    )


def repeated_layout(data_dir: Path, destination: Path, repeat: int) -> Path:
    """A copy of ``data_dir``'s ``{train,eval}/<class>/<image>`` with every image ``repeat``
    times under distinct names: a dataset ``repeat`` times larger. Copies, not links, since the
    layout discovery of preprocessing lists regular files only."""
    for split in SPLITS:
        for class_dir in sorted((data_dir / split).iterdir()):
            if not class_dir.is_dir():
                continue
            target = destination / split / class_dir.name
            target.mkdir(parents=True, exist_ok=True)
            for image in sorted(class_dir.iterdir()):
                for copy in range(repeat):
                    shutil.copyfile(image, target / f"{copy}-{image.name}")
    return destination


def load_with_loop(data_dir: str, image_size: int) -> tuple[Any, Any]:
    """The obvious way: every image through PIL into a list, then one array of all of them."""
    import numpy as np
    from PIL import Image

    images, labels = [], []
    class_names = sorted(os.listdir(os.path.join(data_dir, SPLITS[0])))
    for split in SPLITS:
        for label, class_name in enumerate(class_names):
            folder = os.path.join(data_dir, split, class_name)
            for file_name in sorted(os.listdir(folder)):
                with Image.open(os.path.join(folder, file_name)) as image:
                    resized = image.convert("RGB").resize(
                        (image_size, image_size), Image.Resampling.BILINEAR
                    )
                images.append(np.asarray(resized))
                labels.append(label)
    return np.array(images), np.array(labels)


def count_streamed(records_dir: str, batch_size: int) -> int:
    """Stream every split as the pipeline reads it (train shuffled) and count the images."""
    from components.lib.data.records import TRAIN, load_preprocessed, read_split

    dataset = load_preprocessed(records_dir)
    images = 0
    for split in dataset.counts:
        batches = read_split(dataset, split, batch_size, shuffle=split == TRAIN)
        for pixels, _ in batches.as_numpy_iterator():
            images += len(pixels)
    return images


def measure_side(
    side: str, data_dir: str, records_dir: str, image_size: int, batch_size: int
) -> SideResult:
    """Run one side in this process and measure it; every side imports the same modules first."""
    import numpy  # noqa: F401
    import PIL.Image  # noqa: F401
    import tensorflow

    from components.lib.data import records

    # TensorFlow's runtime starts (thread pools, the first dataset) once per process, before a
    # training process reads any data: it counts with the imports, not with the reading.
    list(tensorflow.data.Dataset.range(1))
    with measure_memory() as memory:
        started = time.perf_counter()
        if side == "preprocess":
            dataset = records.preprocess_dataset(data_dir, records_dir, image_size)
            images = sum(dataset.split_size(split) for split in dataset.counts)
        elif side == "loop":
            pixels, _ = load_with_loop(data_dir, image_size)
            images = len(pixels)
        else:
            images = count_streamed(records_dir, batch_size)
        seconds = time.perf_counter() - started
    return SideResult(side, images, seconds, memory.baseline_bytes, memory.peak_bytes)


def measure_in_subprocess(
    side: str, data_dir: str, records_dir: str, image_size: int, batch_size: int
) -> SideResult:
    """``measure_side`` in a fresh Python process: its memory is its own."""
    command = [
        sys.executable,
        "-m",
        "bench.input_pipeline",
        "--measure",
        side,
        "--data-dir",
        data_dir,
        "--records-dir",
        records_dir,
        "--image-size",
        str(image_size),
        "--batch-size",
        str(batch_size),
    ]
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{side} side failed:\n{done.stderr[-3000:]}")
    return SideResult(**json.loads(done.stdout.splitlines()[-1]))


def compare(loop: SideResult, stream: SideResult) -> tuple[dict[str, float], list[Target]]:
    """The stream's speed-up and memory against the loop's, and the issue's targets on them."""
    figures = {
        "speedup": ratio(stream.images_per_second, loop.images_per_second),
        "peak_rss_ratio": ratio(stream.peak_rss_bytes, loop.peak_rss_bytes),
        "rss_growth_ratio": ratio(stream.rss_growth_bytes, loop.rss_growth_bytes),
    }
    targets = [
        Target("stream/loop images per second", figures["speedup"], TARGET_SPEEDUP, True, "x"),
        Target(
            "stream peak RSS below the loop's",
            stream.peak_rss_bytes / MIB,
            loop.peak_rss_bytes / MIB,
            False,
            " MiB",
        ),
    ]
    return figures, targets


def _table(results: list[SideResult]) -> str:
    rows = [
        (
            result.side,
            result.images,
            f"{result.seconds:.2f}",
            f"{result.images_per_second:.0f}",
            f"{result.baseline_rss_bytes / MIB:.0f}",
            f"{result.peak_rss_bytes / MIB:.0f}",
            f"{result.rss_growth_bytes / MIB:.0f}",
        )
        for result in results
    ]
    headers = ("side", "images", "seconds", "images/s", "baseline MiB", "peak MiB", "growth MiB")
    return format_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.input_pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data-dir", required=True, type=Path, help="images as {train,eval}/<class>/<image>"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="use every image this many times (%(default)s)"
    )
    parser.add_argument(
        "--image-size", type=int, default=224, help="side of the pixels read (%(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="batch size of the stream (%(default)s)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="measure each side this many times, alternately, and keep its best (%(default)s)",
    )
    parser.add_argument("--measure", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--records-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:  # one side, in the process that the comparison started for it
        result = measure_side(
            args.measure, str(args.data_dir), args.records_dir, args.image_size, args.batch_size
        )
        print(json.dumps(asdict(result)))
        return 0
    if args.repeat < 1 or args.rounds < 1:
        parser.error("--repeat and --rounds must be at least 1")

    with tempfile.TemporaryDirectory(prefix="bench-input-") as work:
        data_dir = str(repeated_layout(args.data_dir, Path(work, "data"), args.repeat))
        records_dir = os.path.join(work, "records")

        def measure(side: str, label: str) -> SideResult:
            progress(f"{label}: {side} in its own process ...")
            return measure_in_subprocess(
                side, data_dir, records_dir, args.image_size, args.batch_size
            )

        preprocess = measure("preprocess", "once")
        rounds: dict[str, list[SideResult]] = {side: [] for side in COMPARED}
        for number in range(1, args.rounds + 1):
            for side in COMPARED if number % 2 else reversed(COMPARED):
                rounds[side].append(measure(side, f"round {number}/{args.rounds}"))
    loop, stream = best_of(rounds["loop"]), best_of(rounds["stream"])
    figures, targets = compare(loop, stream)
    for side in COMPARED:
        seconds = ", ".join(f"{result.seconds:.2f}" for result in rounds[side])
        print(f"{side} seconds by round: {seconds}")
    print(_table([preprocess, loop, stream]))
    print(
        f"stream {stream.images_per_second:.0f} images/s vs loop {loop.images_per_second:.0f}: "
        f"{figures['speedup']:.1f}x; peak RSS {figures['peak_rss_ratio']:.2f}x the loop's, "
        f"growth over the post-import baseline {figures['rss_growth_ratio']:.2f}x; "
        f"preprocessing (once per dataset version) took {preprocess.seconds:.1f} s"
    )
    settings = {
        "data_dir": str(args.data_dir),
        "repeat": args.repeat,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
    }
    sides = {result.side: asdict(result) for result in (preprocess, loop, stream)}
    seconds_by_round = {side: [result.seconds for result in rounds[side]] for side in COMPARED}
    return finish(
        "input_pipeline",
        {**settings, "sides": sides, "seconds_by_round": seconds_by_round, **figures},
        targets,
    )


if __name__ == "__main__":
    sys.exit(main())
