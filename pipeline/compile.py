"""``python -m pipeline.compile``: write the compiled pipeline (``pipeline.yaml``)."""

from __future__ import annotations

import argparse
import os

from kfp import compiler

from pipeline.pipeline import TrainResources, build_pipeline

DEFAULT_OUTPUT = "pipeline.yaml"


def compile_pipeline(output: str, resources: TrainResources = TrainResources()) -> str:  # noqa: B008
    """Compile the pipeline to ``output`` and return its path."""
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    compiler.Compiler().compile(build_pipeline(resources), package_path=output)
    return output


def main(argv: list[str] | None = None) -> None:
    defaults = TrainResources()
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.compile",
        description="Compile the training pipeline to a YAML file that Vertex AI Pipelines "
        "and kfp.local run. The train step's compute resources are fixed at compile time.",
    )
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="file to write (%(default)s)")
    parser.add_argument(
        "--accelerator-type",
        default=defaults.accelerator_type,
        help="GPU of the train step on Vertex AI, e.g. NVIDIA_TESLA_T4, NVIDIA_L4 (%(default)s)",
    )
    parser.add_argument(
        "--accelerator-count",
        type=int,
        default=defaults.accelerator_count,
        help="GPUs of the train step (%(default)s)",
    )
    parser.add_argument(
        "--cpu", default=defaults.cpu_limit, help="CPU limit of the train step (%(default)s)"
    )
    parser.add_argument(
        "--memory",
        default=defaults.memory_limit,
        help="memory limit of the train step (%(default)s)",
    )
    args = parser.parse_args(argv)
    resources = TrainResources(
        accelerator_type=args.accelerator_type,
        accelerator_count=args.accelerator_count,
        cpu_limit=args.cpu,
        memory_limit=args.memory,
    )
    print(f"wrote {compile_pipeline(args.output, resources)}")


if __name__ == "__main__":
    main()
