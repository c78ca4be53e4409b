"""Backbones side by side on the beer photos: eval accuracy, training time, model size and
serving latency of every EfficientNet-Lite the pipeline offers, in one run.

For each backbone (``--backbones``, all by default) and each seed (``--seeds``), a fresh Python
process runs what the pipeline's steps run, with the pipeline's defaults: the backbone's native
image size, ``TrainingConfig()`` (the pipeline's training parameters) and a 10% validation split
carved with the seed. It preprocesses, computes the backbone's features, trains (the head on
the features, then fine-tuning, both early-stopped), exports the serving SavedModel and scores
the eval split through its serving signature, as the evaluate step does. Training time is the
features step plus the train step: what changes with the backbone.

Then this process loads every exported model (the first seed's) and sends each single eval
photos (batch 1, the JPEG bytes, as the endpoint calls the model), the models taking turns
request by request, so that other work on the machine slows them alike.

Target: the default backbone (``variants.DEFAULT_BACKBONE``) reaches 0.97 eval accuracy with
every seed.

    python -m bench.backbones --data-dir ../shared/data/beers [--seeds 42 1 7]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import MIB, Target, finish, format_table, memory_status, percentile, progress
from bench.serve_latency import read_images
from components.lib.data.options import PreprocessOptions
from components.lib.modelling.model import TrainingConfig
from components.lib.modelling.variants import (
    BACKBONES,
    DEFAULT_BACKBONE,
    OFFLINE_BACKBONES,
    input_size,
)

TARGET_ACCURACY = 0.97
VALIDATION_FRACTION = PreprocessOptions.validation_fraction  # the pipeline's default
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class TrainingRun:
    """One backbone trained with one seed, measured in its own process."""

    backbone: str
    seed: int
    image_size: int
    parameters: int
    preprocess_s: float
    features_s: float
    train_s: float
    head_epochs: int
    fine_tune_epochs: int
    correct: int
    count: int
    model_dir: str
    model_bytes: int
    peak_rss_bytes: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.count

    @property
    def training_s(self) -> float:
        return self.features_s + self.train_s


def _folder_bytes(folder: str) -> int:
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())


def train_and_score(config: TrainingConfig, data_dir: str, work: str) -> TrainingRun:
    """The pipeline's preprocess, features, train (and export) and evaluate steps, timed."""
    from components.lib.data.records import preprocess_dataset
    from components.lib.evaluation.metrics import evaluate_saved_model
    from components.lib.modelling.features import extract_features
    from components.lib.modelling.model import export_serving_model, train_classifier

    backbone, seed = config.backbone, config.seed

    size = input_size(backbone)
    started = time.perf_counter()
    dataset = preprocess_dataset(
        data_dir,
        os.path.join(work, "records"),
        size,
        seed=seed,
        validation_fraction=VALIDATION_FRACTION,
    )
    preprocessed = time.perf_counter()
    features_dir = os.path.join(work, "features")
    extract_features(dataset, features_dir, backbone=backbone)
    featured = time.perf_counter()
    trained = train_classifier(dataset, config, features_dir)
    model_dir = os.path.join(work, "model")
    export_serving_model(trained.model, dataset.class_names, size, model_dir)
    done = time.perf_counter()
    evaluation = evaluate_saved_model(model_dir, data_dir)
    history = trained.history
    return TrainingRun(
        backbone=backbone,
        seed=seed,
        image_size=size,
        parameters=trained.model.count_params(),
        preprocess_s=preprocessed - started,
        features_s=featured - preprocessed,
        train_s=done - featured,
        head_epochs=len(history.get("head_loss", [])),
        fine_tune_epochs=len(history.get("fine_tune_loss", [])),
        correct=sum(row[index] for index, row in enumerate(evaluation.confusion_matrix)),
        count=evaluation.count,
        model_dir=model_dir,
        model_bytes=_folder_bytes(model_dir),
        peak_rss_bytes=memory_status()["peak_rss"],
    )


def train_in_subprocess(config: TrainingConfig, data_dir: str, work: str) -> TrainingRun:
    """``train_and_score`` in a fresh process: its time and memory are its own. Its log goes to
    ``work/train.log``."""
    command = [sys.executable, "-m", "bench.backbones", "--data-dir", data_dir, "--work", work]
    command += ["--train", config.backbone, "--seeds", str(config.seed)]
    command += ["--epochs", str(config.epochs), "--fine-tune-epochs", str(config.fine_tune_epochs)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    log_path = os.path.join(work, "train.log")
    os.makedirs(work, exist_ok=True)
    with open(log_path, "w") as log:
        done = subprocess.run(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True, check=False
        )
    if done.returncode != 0:
        raise RuntimeError(f"{config.backbone} seed {config.seed} failed; its log: {log_path}")
    return TrainingRun(**json.loads(done.stdout.splitlines()[-1]))


def single_image_latency_ms(model_dir: str, images: list[bytes]) -> tuple[float, float]:
    """p50 and p99 in ms of one-image calls through the export's serving signature, in this
    process, after three untimed calls (the first trace the graph)."""
    from components.lib.serving.prediction import ServingModel

    model = ServingModel(model_dir)
    for image in images[:3]:
        model.predict([image])
    seconds = []
    for image in images:
        started = time.perf_counter()
        model.predict([image])
        seconds.append(time.perf_counter() - started)
    return percentile(seconds, 0.5) * 1000, percentile(seconds, 0.99) * 1000


def summary_table(runs: list[TrainingRun], latency_ms: dict[str, tuple[float, float]]) -> str:
    """One row per backbone: accuracy over the seeds, mean times, the first seed's model."""
    rows = []
    for backbone in dict.fromkeys(run.backbone for run in runs):
        mine = [run for run in runs if run.backbone == backbone]
        first = mine[0]
        accuracies = " / ".join(f"{run.accuracy:.4f}" for run in mine)
        p50, p99 = latency_ms[backbone]
        rows.append(
            (
                backbone + (" (default)" if backbone == DEFAULT_BACKBONE else ""),
                first.image_size,
                f"{first.parameters / 1e6:.2f} M",
                accuracies,
                f"{statistics.mean(run.correct for run in mine):.1f}/{first.count}",
                f"{statistics.mean(run.features_s for run in mine):.0f}",
                f"{statistics.mean(run.train_s for run in mine):.0f}",
                f"{first.model_bytes / MIB:.1f}",
                f"{p50:.1f}",
                f"{p99:.1f}",
                f"{max(run.peak_rss_bytes for run in mine) / MIB:,.0f}",
            )
        )
    headers = (
        "backbone",
        "px",
        "params",
        "eval accuracy by seed",
        "mean correct",
        "features s",
        "train s",
        "model MiB",
        "p50 ms",
        "p99 ms",
        "peak RSS MiB",
    )
    return format_table(headers, rows)


def runs_table(runs: list[TrainingRun]) -> str:
    rows = [
        (
            run.backbone,
            run.seed,
            f"{run.accuracy:.4f} ({run.correct}/{run.count})",
            f"{run.preprocess_s:.1f}",
            f"{run.features_s:.1f}",
            f"{run.train_s:.1f}",
            f"{run.head_epochs} + {run.fine_tune_epochs}",
        )
        for run in runs
    ]
    headers = ("backbone", "seed", "eval accuracy", "preprocess s", "features s", "train s")
    return format_table((*headers, "epochs run (head + fine-tune)"), rows)


def report(
    runs: list[TrainingRun], latency_ms: dict[str, tuple[float, float]]
) -> tuple[str, list[Target]]:
    """Both tables, and the target: the default backbone's lowest eval accuracy over the seeds
    (none when the default was not measured)."""
    text = f"{summary_table(runs, latency_ms)}\n\n{runs_table(runs)}"
    defaults = [run.accuracy for run in runs if run.backbone == DEFAULT_BACKBONE]
    name = f"{DEFAULT_BACKBONE} (default) eval accuracy, lowest over the seeds"
    return text, [Target(name, min(defaults), TARGET_ACCURACY, True)] if defaults else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.backbones",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data-dir", required=True, type=Path, help="images as {train,eval}/<class>/<image>"
    )
    parser.add_argument(
        "--backbones",
        nargs="+",
        choices=list(BACKBONES),
        default=list(OFFLINE_BACKBONES),
        help="backbones to compare (those whose weights need no network)",
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[42], help="training seeds (%(default)s)"
    )
    defaults = TrainingConfig()
    parser.add_argument(
        "--epochs",
        type=int,
        default=defaults.epochs,
        help="head epochs at most (the pipeline's default, %(default)s); fewer for a quick check",
    )
    parser.add_argument(
        "--fine-tune-epochs",
        type=int,
        default=defaults.fine_tune_epochs,
        help="fine-tuning epochs at most (the pipeline's default, %(default)s)",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=200,
        help="timed single-image requests per model (%(default)s)",
    )
    parser.add_argument("--train", choices=list(BACKBONES), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    data_dir = str(args.data_dir.resolve())

    def config(backbone: str, seed: int) -> TrainingConfig:
        return TrainingConfig(
            backbone=backbone,
            seed=seed,
            epochs=args.epochs,
            fine_tune_epochs=args.fine_tune_epochs,
        )

    if args.train:  # one training run, in the process that main started for it
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        run = train_and_score(config(args.train, args.seeds[0]), data_dir, args.work)
        print(json.dumps(asdict(run)))
        return 0
    if args.requests < 1:
        parser.error("--requests must be at least 1")

    with tempfile.TemporaryDirectory(prefix="bench-backbones-") as work:
        runs = []
        for backbone in args.backbones:
            for seed in args.seeds:
                progress(f"{backbone}, seed {seed}: training in its own process ...")
                run = train_in_subprocess(
                    config(backbone, seed), data_dir, os.path.join(work, f"{backbone}-{seed}")
                )
                progress(
                    f"  eval accuracy {run.accuracy:.4f}, features {run.features_s:.0f} s, "
                    f"train {run.train_s:.0f} s"
                )
                runs.append(run)
        models = {run.backbone: run.model_dir for run in runs if run.seed == args.seeds[0]}
        progress(f"serving latency: {args.requests} single-image requests per model ...")
        images = read_images(args.data_dir / "eval", limit=args.requests)
        latency_ms = {
            backbone: single_image_latency_ms(model_dir, images)
            for backbone, model_dir in models.items()
        }
    text, targets = report(runs, latency_ms)
    print(text)
    figures = {
        "data_dir": data_dir,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "fine_tune_epochs": args.fine_tune_epochs,
        "requests": args.requests,
        "default_backbone": DEFAULT_BACKBONE,
        "runs": [{**asdict(run), "accuracy": run.accuracy} for run in runs],
        "latency_ms": {name: {"p50": p50, "p99": p99} for name, (p50, p99) in latency_ms.items()},
    }
    return finish("backbones", figures, targets)


if __name__ == "__main__":
    sys.exit(main())
