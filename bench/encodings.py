"""TFRecords of the images' own bytes against TFRecords of decoded pixels: size and training speed.

Preprocesses the same images both ways (``records.ENCODED``: each file's JPEG bytes, decoded by
``decode_and_resize`` in the input pipeline as the served model does; ``records.PIXELS``: the
decoded, resized uint8 pixels), then measures for each, as ``bench.training`` does: the bytes of
all shards, the augmented input pipeline alone (images/s), and fine-tuning (images/s; an epoch's
time is the difference between a 2-epoch and a 1-epoch run). The images are ``bench.scale``'s
distinct variants of the beer photos.

Targets: encoded records at most half the size of pixel records; training with them at least
0.9 times as fast (decoding in the input pipeline must not slow training down).

    python -m bench.encodings --images 2000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from bench.common import MIB, Target, finish, format_table, progress, ratio
from bench.scale import make_images
from bench.training import input_images_per_second, training_images_per_second

TARGET_SIZE_SHARE = 0.5
TARGET_TRAINING_SHARE = 0.9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.encodings",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--images", type=int, default=2000, help="(%(default)s)")
    parser.add_argument("--image-size", type=int, default=224, help="pixels (%(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="(%(default)s)")
    parser.add_argument("--input-batches", type=int, default=50, help="(%(default)s)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("BEER_DATA_DIR", "../shared/data/beers")),
        help="photos to make the images from (default: $BEER_DATA_DIR or ../shared/data/beers)",
    )
    args = parser.parse_args(argv)

    from components.lib.data.records import ENCODED, PIXELS, preprocess_dataset

    sides: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-encodings-") as work:
        progress(f"making {args.images} images ...")
        data = make_images(args.data_dir, Path(work, "data"), args.images)
        for encoding in (ENCODED, PIXELS):
            progress(f"{encoding}: preprocessing ...")
            records = Path(work, encoding)
            dataset = preprocess_dataset(
                str(data), str(records), args.image_size, validation_fraction=0.1, encoding=encoding
            )
            size = sum(path.stat().st_size for path in records.glob("*.tfrecord"))
            progress(f"{encoding}: input pipeline alone, then fine-tuning ...")
            input_rate = input_images_per_second(dataset, args.batch_size, args.input_batches)
            training = training_images_per_second(dataset, args.batch_size, epochs=1)
            sides[encoding] = {
                "records_mib": size / MIB,
                "bytes_per_image": size / args.images,
                "input_images_per_second": input_rate,
                "training_images_per_second": training["training_images_per_second"],
            }
    print(
        format_table(
            ["records hold", "MiB", "KB/image", "input images/s", "training images/s"],
            [
                [
                    encoding,
                    f"{side['records_mib']:.1f}",
                    f"{side['bytes_per_image'] / 1000:.1f}",
                    f"{side['input_images_per_second']:.0f}",
                    f"{side['training_images_per_second']:.1f}",
                ]
                for encoding, side in sides.items()
            ],
        )
    )
    encoded, pixels = sides[ENCODED], sides[PIXELS]
    targets = [
        Target(
            "encoded / pixel records, size",
            ratio(encoded["records_mib"], pixels["records_mib"]),
            TARGET_SIZE_SHARE,
            False,
        ),
        Target(
            "encoded / pixel records, training images/s",
            ratio(encoded["training_images_per_second"], pixels["training_images_per_second"]),
            TARGET_TRAINING_SHARE,
            True,
        ),
    ]
    settings = {"images": args.images, "image_size": args.image_size}
    return finish("encodings", {**settings, "sides": sides}, targets)


if __name__ == "__main__":
    sys.exit(main())
