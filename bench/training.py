"""Training throughput (images/s) of the train step, and the input pipeline's, on this machine.

Training: the fine-tuning phase of ``train_classifier`` (the heavier one: top of the backbone
trainable, augmentation on) under the strategy and precision the machine calls for. An epoch's
time is the difference between a run of ``--epochs`` + 1 epochs and a run of 1, so model
building and tracing are left out. Input: the same augmented ``read_split`` stream alone, with
nothing consuming it, which is the most the accelerator could be fed.

    python -m bench.training --data-dir ../shared/data/beers [--epochs 2] [--batch-size 32]

On a GPU (Vertex AI, or a lent machine) the same command reports the GPU figures: mixed
precision and the batch per replica follow the hardware.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Target, finish, format_table, progress, ratio


def input_images_per_second(dataset, batch_size: int, batches: int) -> float:
    """Images/s that the augmented training stream delivers, after a warm-up batch."""
    from components.lib.data.records import TRAIN, read_split
    from components.lib.modelling.model import augmentation

    stream = iter(
        read_split(
            dataset, TRAIN, batch_size, shuffle=True, repeat=True, augment=augmentation(0.2, 42)
        )
    )
    next(stream)
    started = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return batches * batch_size / (time.perf_counter() - started)


def training_images_per_second(dataset, batch_size: int, epochs: int) -> dict:
    """Images/s of fine-tuning epochs, with the device, replicas and precision used."""
    import tensorflow as tf

    from components.lib.modelling.model import TrainingConfig, train_classifier

    seconds = {}
    for count in (1, epochs + 1):
        progress(f"fine-tuning for {count} epoch(s) ...")
        config = TrainingConfig(
            epochs=0, fine_tune_epochs=count, batch_size=batch_size, early_stopping_patience=0
        )
        started = time.perf_counter()
        trained = train_classifier(dataset, config)
        seconds[count] = time.perf_counter() - started
    epoch_seconds = (seconds[epochs + 1] - seconds[1]) / epochs
    gpus = tf.config.list_physical_devices("GPU")
    return {
        "device": tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
        if gpus
        else "CPU",
        "replicas": trained.replicas,
        "mixed_precision": trained.mixed_precision,
        "epoch_seconds": round(epoch_seconds, 2),
        "training_images_per_second": round(ratio(dataset.split_size("train"), epoch_seconds), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.training",
        description="Training throughput of the train step (fine-tuning, images/s) and of its "
        "input pipeline alone. The input pipeline must outrun training (target: ratio >= 1), "
        "or the accelerator waits for data; exits 1 otherwise.",
    )
    parser.add_argument("--data-dir", required=True, help="images in the challenge layout")
    parser.add_argument("--image-size", type=int, default=224, help="pixels (%(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="per replica (%(default)s)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs (%(default)s)")
    parser.add_argument("--input-batches", type=int, default=50, help="(%(default)s)")
    args = parser.parse_args(argv)

    from components.lib.data.records import preprocess_dataset

    with tempfile.TemporaryDirectory(prefix="bench-training-") as work:
        progress("preprocessing ...")
        dataset = preprocess_dataset(
            args.data_dir, str(Path(work) / "records"), args.image_size, validation_fraction=0.1
        )
        progress("input pipeline alone ...")
        input_rate = input_images_per_second(dataset, args.batch_size, args.input_batches)
        figures = training_images_per_second(dataset, args.batch_size, args.epochs)
    figures |= {
        "image_size": args.image_size,
        "batch_size_per_replica": args.batch_size,
        "input_images_per_second": round(input_rate, 1),
    }
    print(
        format_table(
            ["what", "images/s"],
            [
                [
                    f"training (fine-tuning, {figures['device']}, {figures['replicas']} "
                    f"replica(s), {'mixed' if figures['mixed_precision'] else 'float32'})",
                    figures["training_images_per_second"],
                ],
                ["input pipeline (read, decode, augment)", figures["input_images_per_second"]],
            ],
        )
    )
    headroom = ratio(figures["input_images_per_second"], figures["training_images_per_second"])
    figures["input_headroom"] = round(headroom, 2)
    target = Target("input pipeline / training throughput", headroom, 1.0, True, "x")
    return finish("training", figures, [target])


if __name__ == "__main__":
    sys.exit(main())
