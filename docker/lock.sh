#!/usr/bin/env bash
# Regenerate docker/requirements.lock, the exact versions the image installs, from pyproject.toml.
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
