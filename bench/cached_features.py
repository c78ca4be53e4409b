"""Training the head: on backbone features computed once, versus the frozen backbone every epoch.

Both sides are the product's own ``train_classifier`` with the head phase only (no fine-tuning,
no early stopping, so both run every epoch): once with ``features_dir`` from ``extract_features``
(whose time counts), once without, pushing every image through EfficientNet-Lite0 each epoch.
Time to a trained head includes building the model; preprocessing, shared, is timed apart.

    python -m bench.cached_features --data-dir ../shared/data/beers [--epochs 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Target, finish, format_table, progress, ratio

TARGET_SPEEDUP = 5.0


def time_to_trained_head(data_dir: str, work: Path, epochs: int, image_size: int) -> dict:
    """Seconds to a trained head both ways, and each head's final validation accuracy."""
    from components.lib.data.records import preprocess_dataset
    from components.lib.modelling.features import extract_features
    from components.lib.modelling.model import TrainingConfig, train_classifier

    started = time.perf_counter()
    dataset = preprocess_dataset(
        data_dir, str(work / "records"), image_size, validation_fraction=0.1
    )
    preprocess_seconds = time.perf_counter() - started
    config = TrainingConfig(epochs=epochs, fine_tune_epochs=0, early_stopping_patience=0)

    progress(f"head on images through the frozen backbone, {epochs} epochs ...")
    started = time.perf_counter()
    every_epoch = train_classifier(dataset, config)
    every_epoch_seconds = time.perf_counter() - started

    progress("backbone features once, then the head on them ...")
    started = time.perf_counter()
    extract_features(dataset, str(work / "features"))
    extract_seconds = time.perf_counter() - started
    cached = train_classifier(dataset, config, features_dir=str(work / "features"))
    cached_seconds = time.perf_counter() - started
    return {
        "images": dataset.split_size("train"),
        "epochs": epochs,
        "image_size": image_size,
        "preprocess_seconds": round(preprocess_seconds, 2),
        "backbone_every_epoch_seconds": round(every_epoch_seconds, 2),
        "cached_features_seconds": round(cached_seconds, 2),
        "of_which_extract_seconds": round(extract_seconds, 2),
        "speedup": round(ratio(every_epoch_seconds, cached_seconds), 2),
        "backbone_every_epoch_val_accuracy": round(every_epoch.history["head_val_accuracy"][-1], 4),
        "cached_features_val_accuracy": round(cached.history["head_val_accuracy"][-1], 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cached_features",
        description="Time to a trained classification head: backbone features computed once "
        f"and reused, versus the frozen backbone run every epoch (target: >= {TARGET_SPEEDUP}x "
        "at 10+ epochs). Exits 1 when the target is missed.",
    )
    parser.add_argument("--data-dir", required=True, help="images in the challenge layout")
    parser.add_argument("--epochs", type=int, default=10, help="head epochs (%(default)s)")
    parser.add_argument("--image-size", type=int, default=224, help="pixels (%(default)s)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-features-") as work:
        figures = time_to_trained_head(args.data_dir, Path(work), args.epochs, args.image_size)
    print(
        format_table(
            ["head training", "seconds", "val accuracy"],
            [
                [
                    "frozen backbone every epoch",
                    figures["backbone_every_epoch_seconds"],
                    figures["backbone_every_epoch_val_accuracy"],
                ],
                [
                    f"features once ({figures['of_which_extract_seconds']} s), then head",
                    figures["cached_features_seconds"],
                    figures["cached_features_val_accuracy"],
                ],
            ],
        )
    )
    print(f"speed-up: {figures['speedup']}x over {args.epochs} epochs")
    target = Target("cached features speed-up", figures["speedup"], TARGET_SPEEDUP, True, "x")
    return finish("cached_features", figures, [target])


if __name__ == "__main__":
    sys.exit(main())
