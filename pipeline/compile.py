"""``python -m pipeline.compile``: write the compiled pipeline (``pipeline.yaml``)."""

from __future__ import annotations

import argparse
import os

from kfp import compiler

from components.images import PLACEHOLDERS, ImageError, ImageSet, Role
from components.lib.targets.machines import table
from pipeline.pipeline import TrainResources, build_pipeline

DEFAULT_OUTPUT = "pipeline.yaml"


def compile_pipeline(
    output: str,
    resources: TrainResources = TrainResources(),
    images: ImageSet = PLACEHOLDERS,
) -> str:
    """Compile the pipeline, each step in its role's image, to ``output``; returns its path."""
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    compiler.Compiler().compile(build_pipeline(resources, images), package_path=output)
    return output


def add_image_options(parser: argparse.ArgumentParser, **kwargs: object) -> None:
    """``--image`` and the flags that name the other images one by one (``image_set``)."""
    parser.add_argument(
        "--image",
        help="the GPU image of the steps, as docker/build.sh pushed it (bash docker/build.sh "
        "--print-uri); the cpu, light and serving images are named beside it "
        "(REPO/NAME-cpu:TAG, ...) unless given below",
        **kwargs,
    )
    for role in Role:
        if role is not Role.GPU:
            parser.add_argument(
                f"--{role.value}-image",
                help=f"the {role.value} image, when not the one pushed beside --image",
                **kwargs,
            )


def image_set(args: argparse.Namespace, allow_placeholders: bool = False) -> ImageSet:
    """The images that ``add_image_options``'s flags name; ``ImageError`` (one line) when they
    name none, or placeholders that no registry holds and ``allow_placeholders`` is false."""
    overrides = {
        role.value: getattr(args, f"{role.value}_image", None)
        for role in Role
        if role is not Role.GPU
    }
    image = getattr(args, "image", None)
    if not image:
        if not allow_placeholders:
            raise ImageError(
                "no --image: build and push the images (bash docker/build.sh --project PROJECT) "
                "and give the GPU image's URI (build.sh --print-uri)"
            )
        image = PLACEHOLDERS.gpu
    images = ImageSet.beside(image, **overrides)
    if not allow_placeholders:
        images.refuse_placeholders("give the URIs of the images you pushed")
    return images


def main(argv: list[str] | None = None) -> None:
    defaults = TrainResources()
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.compile",
        description="Compile the training pipeline to a YAML file that Vertex AI Pipelines "
        "and kfp.local run. The images and the train step's compute resources are fixed at "
        "compile time. The train step is a plain pipeline step (what kfp.local runs) unless "
        "--replicas above 1, --machine-type, --spot or --tensorboard is given: then it runs as a "
        "Vertex AI custom training job, which kfp.local cannot run.",
        epilog="Each GPU attaches to one machine family on Vertex AI (a job or tuning trial "
        "that names no --machine-type gets the family's machine for its GPUs; another "
        "pairing is refused):\n" + table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="file to write (%(default)s)")
    add_image_options(parser)
    parser.add_argument(
        "--placeholder-images",
        action="store_true",
        help="compile without images: every step names a placeholder in the reserved "
        f"{PLACEHOLDERS.gpu.split('/')[0]} domain, which no registry holds (the checked-in "
        "pipeline.yaml; it runs with kfp.local, not on Vertex AI until compiled with --image)",
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
    try:
        images = image_set(args, allow_placeholders=args.placeholder_images)
    except ImageError as error:
        parser.error(str(error))
    print(f"wrote {compile_pipeline(args.output, resources, images)}")


if __name__ == "__main__":
    main()
