"""Image sizes, and the bytes a Vertex AI run pulls: each step starts a fresh machine that pulls
its step's image, so a run pulls the sum over its steps of their image's size.

    python -m bench.images [--registry localhost] [--before-bytes N] [--json]

Sizes are read from podman's store (the images ``.ci/images.sh`` built; uncompressed, as
``podman images`` shows them). The steps are those of a default run of the compiled pipeline:
no tuning (the ``no-tuning`` branch), the gate open (upload and deploy). "Before" is every step in
one image of ``--before-bytes`` (default: the former single pipeline image on
tensorflow/tensorflow:2.21.0-gpu, 9.7 GB, measured on that base; ``podman images`` on a build of
it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from components.images import ImageSet, Role
from pipeline.compile import compile_pipeline

BEFORE_BYTES = 9_700_000_000
"""The single pipeline image on tensorflow/tensorflow:2.21.0-gpu (base 8.48 GB + 1.19 GB venv)."""
TAKEN_BRANCHES = {"no-tuning", "accuracy-gate"}
"""A default run's branches: no tuning trials, and a model that passes the gate."""


def default_run_images(spec: dict[str, Any]) -> list[str]:
    """The image of each step a default run of ``spec`` runs, one entry per step."""
    images = []

    def walk(dag: dict[str, Any]) -> None:
        for task in dag["tasks"].values():
            component = spec["components"][task["componentRef"]["name"]]
            if "dag" in component:
                name = task["taskInfo"]["name"]
                if name.startswith("condition-branches") or name in TAKEN_BRANCHES:
                    walk(component["dag"])
                continue
            executor = spec["deploymentSpec"]["executors"][component["executorLabel"]]
            images.append(executor["container"]["image"])

    walk(spec["root"]["dag"])
    return images


def image_bytes(image: str) -> int:
    result = subprocess.run(
        ["podman", "image", "inspect", image, "--format", "{{.Size}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(result.stdout.strip())


def measure(images: ImageSet, before_bytes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        path = compile_pipeline(str(Path(folder) / "pipeline.yaml"), images=images)
        steps = default_run_images(yaml.safe_load(Path(path).read_text()))
    sizes = {role.value: image_bytes(images.for_role(role)) for role in Role}
    by_image = {images.for_role(role): sizes[role.value] for role in Role}
    per_role = Counter(
        role.value for role in Role for image in steps if image == images.for_role(role)
    )
    after = sum(by_image[image] for image in steps)
    before = before_bytes * len(steps)
    return {
        "image_bytes": sizes,
        "steps_per_image": dict(per_role),
        "steps": len(steps),
        "pulled_bytes_before": before,
        "pulled_bytes_after": after,
        "reduction": before / after,
        "light_to_gpu": sizes["light"] / sizes["gpu"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.images", description=__doc__)
    parser.add_argument("--registry", default="localhost", help="where the images were built")
    parser.add_argument("--before-bytes", type=int, default=BEFORE_BYTES)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    from components.images import NAME, VERSION

    figures = measure(ImageSet.beside(f"{args.registry}/{NAME}:{VERSION}"), args.before_bytes)
    if args.json:
        print(json.dumps(figures))
        return 0
    gb = 1e9
    print("image      size (GB)  steps of a default run")
    for role, size in figures["image_bytes"].items():
        print(f"{role:<10} {size / gb:9.2f}  {figures['steps_per_image'].get(role, 0)}")
    print(
        f"pulled per run: before {figures['pulled_bytes_before'] / gb:.1f} GB "
        f"({figures['steps']} steps x {args.before_bytes / gb:.1f} GB), after "
        f"{figures['pulled_bytes_after'] / gb:.1f} GB: {figures['reduction']:.1f}x fewer; "
        f"light image {figures['light_to_gpu']:.2f} of the GPU image"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
