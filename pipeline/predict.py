"""``python -m pipeline.predict``: batch prediction with a registered model version.

Scores a folder or ``gs://`` prefix of images, one image, or a JSONL file of instances, and
writes one JSONL line per input (``file``, ``class_name``, ``class_index``, ``probabilities``,
``model_version``; ``error`` for a bad file). Locally the version's SavedModel is loaded through
the serving path; with ``--target vertex`` a Vertex AI batch prediction job of the version
scores them. Run the same command again after an interruption: inputs already in the output
are skipped.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from components.lib.serving.batch import (
    DEFAULT_BATCH_SIZE,
    BatchPredictionError,
    InstanceSource,
    Summary,
)
from components.lib.targets import model_registry, needs_cloud
from components.lib.targets.base import LOCAL, TARGETS
from components.lib.targets.batch import BatchOptions, batch_predict
from components.lib.targets.local import default_state_dir
from pipeline.settings import DEFAULT_CONFIG, ENV_PREFIX, UsageError, read_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.predict",
        description="Batch prediction: score many images with a registered model version and "
        "write JSONL predictions. Resumable: inputs already in the output are skipped.",
    )
    parser.add_argument(
        "model",
        help="MODEL[@VERSION|@ALIAS]: display name, id or resource name; without @, the "
        "default alias (the newest version), e.g. mugs-classifier@3",
    )
    parser.add_argument(
        "source",
        help="a folder or gs:// prefix of images, one image, or a .jsonl file of instances "
        '({"bytes": {"b64": ...}} per line, optionally with a "file" name)',
    )
    parser.add_argument("--output", "-o", required=True, help="JSONL file of predictions (local)")
    parser.add_argument(
        "--target", choices=TARGETS, default=LOCAL, help="registry to read (%(default)s)"
    )
    parser.add_argument(
        "--state-dir",
        default=default_state_dir(),
        help="local: the registry's folder (env IMAGE_CLASSIFIER_STATE_DIR, default %(default)s)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="local: images per call"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    vertex = parser.add_argument_group(
        "Vertex AI (--target vertex)",
        f"project, region and pipeline root as pipeline.run reads them: the flag, else the "
        f"environment ({ENV_PREFIX}<NAME>), else the config file",
    )
    vertex.add_argument("--project", help=f"Google Cloud project (env {ENV_PREFIX}PROJECT)")
    vertex.add_argument("--region", help=f"Vertex AI region (env {ENV_PREFIX}REGION)")
    vertex.add_argument(
        "--staging",
        help="gs:// folder for the job's instances and outputs "
        f"(default: batch-prediction under the pipeline root, env {ENV_PREFIX}PIPELINE_ROOT)",
    )
    vertex.add_argument(
        "--config",
        help=f"YAML file of settings (env {ENV_PREFIX}CONFIG, default {DEFAULT_CONFIG})",
    )
    vertex.add_argument(
        "--machine-type", default="n1-standard-2", help="machines of the job (%(default)s)"
    )
    vertex.add_argument("--max-replicas", type=int, default=1, help="machines at most (1)")
    return parser


def _setting(values: dict[str, Any], name: str, flag: str, path: str) -> str:
    if not values[name]:
        raise UsageError(
            f"--target vertex needs {flag} (or {ENV_PREFIX}{name.upper()}, or {name!r} in {path})"
        )
    return values[name]


def predict(args: argparse.Namespace) -> Summary:
    """Resolve the version in the target's registry, then score with the target's batch path."""
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    project = region = staging = ""
    if needs_cloud(args.target):
        from pipeline.submit import check_caller

        # The settings first (no network), then credentials before the first request (a gs://
        # source's listing): one line each.
        values, _, path = read_settings(args)
        project = _setting(values, "project", "--project", path)
        region = _setting(values, "region", "--region", path)
        root = values["pipeline_root"]
        staging = args.staging or (root and f"{root.rstrip('/')}/batch-prediction")
        if not staging:
            raise UsageError(
                f"--target vertex needs --staging (or {ENV_PREFIX}PIPELINE_ROOT, or "
                f"'pipeline_root' in {path})"
            )
        check_caller()
    source = InstanceSource(args.source, exclude=args.output)
    version = model_registry(args.target, args.state_dir, project, region).resolve(args.model)
    print(f"model version  {version.resource_name}", file=sys.stderr)
    options = BatchOptions(
        batch_size=args.batch_size,
        staging=staging,
        machine_type=args.machine_type,
        max_replicas=args.max_replicas,
        progress=not args.no_progress,
    )
    return batch_predict(args.target, project, region, version, source, args.output, options)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    usage = (UsageError, BatchPredictionError, KeyError, ValueError)
    failures: tuple[type[Exception], ...] = usage
    if needs_cloud(args.target):
        from components.lib.targets.vertex import VertexError
        from pipeline.submit import SetupError

        usage = (*usage, SetupError)
        failures = (*usage, VertexError)
    try:
        summary = predict(args)
    except failures as error:
        message = error.args[0] if isinstance(error, KeyError) else error
        print(f"error: {message}", file=sys.stderr)
        return 2 if isinstance(error, usage) else 1
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(summary.describe(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
