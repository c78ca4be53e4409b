"""``python -m pipeline.compile``: write the compiled pipeline (``pipeline.yaml``)."""

from __future__ import annotations

import argparse
import os

from kfp import compiler

from components import PIPELINE_IMAGE
from components.lib.targets.machines import table
from pipeline.pipeline import TrainResources, build_pipeline

DEFAULT_OUTPUT = "pipeline.yaml"


def compile_pipeline(
    output: str,
    resources: TrainResources = TrainResources(),
    image: str = PIPELINE_IMAGE,
) -> str:
    """Compile the pipeline, every step in ``image``, to ``output`` and return its path."""
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    compiler.Compiler().compile(build_pipeline(resources, image), package_path=output)
    return output


def main(argv: list[str] | None = None) -> None:
    defaults = TrainResources()
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.compile",
        description="Compile the training pipeline to a YAML file that Vertex AI Pipelines "
        "and kfp.local run. The image and the train step's compute resources are fixed at "
        "compile time. The train step is a plain pipeline step (what kfp.local runs) unless "
        "--replicas above 1, --machine-type, --spot or --tensorboard is given: then it runs as a "
        "Vertex AI custom training job, which kfp.local cannot run.",
        epilog="Each GPU attaches to one machine family on Vertex AI (a job or tuning trial "
        "that names no --machine-type gets the family's machine for its GPUs; another "
        "pairing is refused):\n" + table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="file to write (%(default)s)")
    parser.add_argument(
        "--image",
        default=PIPELINE_IMAGE,
        help="container image every step runs in on Vertex AI (%(default)s)",
    )
    parser.add_argument(
        "--accelerator-type",
        default=defaults.accelerator_type,
        help="GPU of the train step (of each replica of a custom job) on Vertex AI, e.g. "
        "NVIDIA_TESLA_T4, NVIDIA_L4; empty for none in a custom job (%(default)s)",
    )
    parser.add_argument(
        "--accelerator-count",
        type=int,
        default=defaults.accelerator_count,
        help="GPUs of the train step, per replica in a custom job (%(default)s)",
    )
    parser.add_argument("--cpu", help=f"CPU limit of the plain train step ({defaults.cpu_limit})")
    parser.add_argument(
        "--memory", help=f"memory limit of the plain train step ({defaults.memory_limit})"
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=defaults.replica_count,
        help="machines of the train step; above 1: a custom job with one chief and N-1 workers "
        "(%(default)s)",
    )
    parser.add_argument(
        "--machine-type",
        default=defaults.machine_type,
        help="Compute Engine machine type of each replica, e.g. n1-standard-8, g2-standard-8; "
        "makes the train step a custom job (one that names none gets its GPU's machine, "
        "below)",
    )
    parser.add_argument(
        "--spot",
        action="store_true",
        help="run the train step as a custom job on spot VMs; a preempted job restarts and "
        "resumes from its checkpoints",
    )
    parser.add_argument(
        "--tensorboard",
        default=defaults.tensorboard,
        help="a Vertex AI TensorBoard, projects/P/locations/L/tensorboards/ID: the train step "
        "runs as a custom job that streams its TensorBoard logs there (the job's service "
        "account needs roles/aiplatform.user and write access to the pipeline root)",
    )
    args = parser.parse_args(argv)
    try:
        resources = TrainResources(
            accelerator_type=args.accelerator_type,
            accelerator_count=args.accelerator_count,
            cpu_limit=args.cpu or defaults.cpu_limit,
            memory_limit=args.memory or defaults.memory_limit,
            replica_count=args.replicas,
            machine_type=args.machine_type,
            spot=args.spot,
            tensorboard=args.tensorboard,
        )
    except ValueError as error:
        parser.error(str(error))
    if resources.custom_job and (args.cpu or args.memory):
        parser.error("--cpu and --memory apply to the plain train step; choose a --machine-type")
    print(f"wrote {compile_pipeline(args.output, resources, args.image)}")


if __name__ == "__main__":
    main()
