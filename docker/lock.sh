#!/usr/bin/env bash
# Regenerate the exact versions the images install, from pyproject.toml: docker/requirements.lock
# (the pipeline image: every dependency) and docker/serving-requirements.lock (the serving image:
# SERVING_PACKAGES below at pyproject.toml's ranges, and TensorFlow's CPU build at its pin).
# Run it after any change to the dependencies in pyproject.toml:
#   bash docker/lock.sh              # keeps the locked versions that still fit
#   bash docker/lock.sh --upgrade    # moves every package to its newest allowed version
# Extra arguments go to `uv pip compile` (uv: `pip install uv`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The Python of the base image (Dockerfile: FROM tensorflow/tensorflow:*-gpu, Ubuntu 22.04 with
# python3.11; the Dockerfile's first RUN fails the build if that ever changes) and its
# platform (glibc 2.35, x86_64), so the lock holds the wheels that install there.
PYTHON_VERSION=3.11
PLATFORM=x86_64-manylinux_2_35

if ! command -v uv >/dev/null; then
  echo "lock.sh: uv not found; install it with: pip install uv" >&2
  exit 1
fi
uv pip compile pyproject.toml --quiet --extra dataflow \
  --python-version "$PYTHON_VERSION" --python-platform "$PLATFORM" \
  --custom-compile-command "bash docker/lock.sh" \
  --output-file docker/requirements.lock "$@"

# What `python -m pipeline.serve` imports (components/lib/serving, components/lib/storage and the
# local registry's standard library), by name; tests/test_serve_container.py runs the server with
# the training packages made unimportable, tests/test_docker.py checks this lock against it.
SERVING_PACKAGES="fsspec gcsfs numpy pillow starlette uvicorn httptools uvloop prometheus-client"
# python:3.11-slim (docker/Dockerfile.serving) is Debian 12: glibc 2.36, so PLATFORM's wheels fit.
# Constrained by the pipeline's lock: the server runs the versions that the tests ran.
python3 - "$SERVING_PACKAGES" <<'PY' |
import sys, tomllib
from packaging.requirements import Requirement
wanted = set(sys.argv[1].split())
for line in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    requirement = Requirement(line)
    if requirement.name == "tensorflow":
        print(f"tensorflow-cpu{requirement.specifier}")
    elif requirement.name in wanted:
        print(line)
PY
  uv pip compile - --quiet --constraint docker/requirements.lock \
    --python-version "$PYTHON_VERSION" --python-platform "$PLATFORM" \
    --custom-compile-command "bash docker/lock.sh" \
    --output-file docker/serving-requirements.lock "$@"
