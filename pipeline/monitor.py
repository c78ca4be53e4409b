"""``python -m pipeline.monitor``: do the photos the endpoint receives still look like the
training photos? (``--images``: do these photos?)

It reads the served model's reference (``<model>/monitoring/reference.npz``, written at
training), the recent request samples that the server wrote (or the embeddings of ``--images``
through the served model), runs the drift tests (``components.lib.monitoring.drift``) and writes
an HTML report and ``verdict.json``. Exit status 0: no drift, 3: drift (a scheduler can start
the training pipeline on it), 2: bad input, 1: it could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import NoReturn

from components.lib.monitoring.drift import DEFAULT_ALPHA, DEFAULT_PERMUTATIONS
from components.lib.targets.base import LOCAL, TARGETS
from components.lib.targets.local import default_state_dir

DRIFT_EXIT = 3
DEFAULT_SAMPLE_SIZE = 200
LOCAL_PROJECT, LOCAL_LOCATION = "local-project", "europe-west1"  # as pipeline.run's local runs
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see --help)\n")


NO_ENDPOINT = (
    "--endpoint: name the endpoint, as the training run's summary names it "
    "(e.g. mugs-classifier-endpoint)"
)


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """The endpoint to look at, on either target (shared with ``pipeline.canary``)."""
    parser.add_argument("--target", choices=TARGETS, default=LOCAL, help="(%(default)s)")
    parser.add_argument(
        "--endpoint",
        help="the endpoint's display name, as the training run's summary names it (e.g. "
        "mugs-classifier-endpoint: named after the data unless the run was given a name)",
    )
    parser.add_argument(
        "--state-dir",
        default=default_state_dir(),
        help="local target: the registry and endpoints folder (%(default)s)",
    )
    parser.add_argument("--project", help="vertex target: the project (local: not needed)")
    parser.add_argument("--location", help="vertex target: the region (local: not needed)")


def target_of(args: argparse.Namespace) -> tuple[str, str, str, str]:
    """(target, state folder, project, location) for ``served_endpoint``."""
    if args.target == LOCAL:
        return LOCAL, args.state_dir, args.project or LOCAL_PROJECT, args.location or LOCAL_LOCATION
    if not (args.project and args.location):
        raise ValueError("--target vertex needs --project and --location")
    return args.target, "", args.project, args.location


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(
        prog="python -m pipeline.monitor",
        description="Compare the photos an endpoint receives (the server's request samples) or "
        "a folder of photos (--images) with the training photos of the model it serves: an "
        "MMD permutation test on the backbone embeddings, plus the confidence distribution and "
        "the predicted-class mix. Writes report.html and verdict.json. Exit status: 0 no drift, "
        f"{DRIFT_EXIT} drift, 2 bad input, 1 failure.",
    )
    add_target_arguments(parser)
    parser.add_argument(
        "--images",
        help="a folder or gs:// prefix of photos to test instead of the recent requests "
        "(e.g. a batch before it is sent or used for training)",
    )
    parser.add_argument(
        "--model",
        help="the model folder (or gs://) whose reference to compare with, instead of the "
        "endpoint's champion; then --samples or --images says what to compare",
    )
    parser.add_argument("--samples", help="the request samples' folder, instead of the endpoint's")
    parser.add_argument(
        "--sample-size",
        type=int,
        default=DEFAULT_SAMPLE_SIZE,
        help="newest sampled requests (or photos) compared at most (%(default)s)",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=DEFAULT_ALPHA,
        help="false-alarm rate: drift when a test's p-value is below alpha/3 (%(default)s)",
    )
    parser.add_argument(
        "--permutations", type=int, default=DEFAULT_PERMUTATIONS, help="(%(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="(%(default)s)")
    parser.add_argument(
        "--report-dir",
        default="monitoring-report",
        help="where report.html and verdict.json go, a folder or gs:// (%(default)s)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the verdict as JSON, as the last line"
    )
    args = parser.parse_args(argv)
    if args.sample_size < 2 or args.permutations < 10 or not 0 < args.alpha < 1:
        parser.error("--sample-size needs >= 2, --permutations >= 10, --alpha in (0, 1)")
    if args.model and not (args.samples or args.images):
        parser.error("--model needs --samples or --images")
    if not (args.model or args.endpoint):
        parser.error(NO_ENDPOINT + " (or --model)")
    return args


def list_images(uri: str, limit: int) -> list[bytes]:
    """Up to ``limit`` photos under ``uri`` (recursively), in name order."""
    from components.lib.storage import filesystem, read_files

    fs, path = filesystem(uri)
    if not fs.isdir(path):
        raise ValueError(f"--images {uri} is not a folder")
    paths = sorted(p for p in fs.find(path) if p.lower().endswith(IMAGE_SUFFIXES))
    if not paths:
        raise ValueError(f"--images {uri} holds no photos ({', '.join(IMAGE_SUFFIXES)})")
    if len(paths) > limit:  # an even spread over the names, not the first folder only
        paths = [paths[i] for i in sorted({round(j * len(paths) / limit) for j in range(limit)})]
    read = read_files(fs, paths)
    return [data for data in read if isinstance(data, bytes)]


def images_sample(model_uri: str, images: list[bytes]):
    """The photos through the served model: their embeddings and predictions."""
    import numpy as np

    from components.lib.monitoring.sampler import Sample
    from components.lib.serving.prediction import ServingModel

    model = ServingModel(model_uri, with_embeddings=True)
    embeddings, probabilities = [], []
    for start in range(0, len(images), 32):
        predicted = model.predict(images[start : start + 32])
        probabilities.append(predicted.probabilities)
        if predicted.embeddings is not None:
            embeddings.append(predicted.embeddings)
    return Sample.of(
        np.concatenate(embeddings) if embeddings else None, np.concatenate(probabilities)
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from components.lib.monitoring.drift import compare
    from components.lib.monitoring.reference import load_reference
    from components.lib.monitoring.report import write_report
    from components.lib.monitoring.sampler import read_recent
    from components.lib.targets.served import (
        NotServedError,
        check_endpoint_drift,
        served_endpoint,
    )

    try:
        if not (args.model or args.images):  # the endpoint's recent requests: the usual case
            verdict, written = check_endpoint_drift(
                *target_of(args),
                args.endpoint,
                args.report_dir,
                args.sample_size,
                args.alpha,
                args.permutations,
                args.seed,
            )
        else:
            if args.model:
                model_uri, samples_uri, facts = args.model, args.samples, {"model": args.model}
            else:
                champion = served_endpoint(*target_of(args), args.endpoint).champion
                model_uri, samples_uri = champion.version.artifact_uri, champion.samples_uri
                facts = {"served version": champion.label}
            reference = load_reference(model_uri)
            if args.images:
                sample = images_sample(model_uri, list_images(args.images, args.sample_size))
                facts["photos"] = args.images
            else:
                sample, windows = read_recent(samples_uri, args.sample_size)
                facts["request samples"] = f"{samples_uri} ({windows} newest windows)"
            verdict = compare(reference, sample, args.alpha, args.permutations, args.seed)
            written = write_report(args.report_dir, verdict, reference, sample, facts)
    except (ValueError, NotServedError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    tests = ", ".join(
        f"{name} p={test.p_value:.4g}"
        for name, test in verdict.tests.items()
        if test.p_value is not None
    )
    print(
        f"{'DRIFT' if verdict.drift else 'no drift'}: {verdict.sample_size} photos against "
        f"{verdict.reference_size} training embeddings; {tests}",
        file=sys.stderr if args.json else sys.stdout,
    )
    print(f"report: {written['report.html']}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(verdict.to_dict()))
    return DRIFT_EXIT if verdict.drift else 0


if __name__ == "__main__":
    sys.exit(main())
