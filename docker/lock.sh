#!/usr/bin/env bash
# Regenerate the exact versions the images install, from pyproject.toml:
#   docker/requirements.lock          the GPU image: every dependency, TensorFlow with its CUDA
#                                     libraries (the `gpu` extra) and Beam's Dataflow extra
#   docker/cpu-requirements.lock      the CPU image: CPU_PACKAGES, TensorFlow's CPU build, Beam's
#                                     Dataflow extra
#   docker/light-requirements.lock    the light image: LIGHT_PACKAGES, no TensorFlow
#   docker/serving-requirements.lock  the serving image: SERVING_PACKAGES and TensorFlow's CPU build
# Each lock after the first is constrained by it: every image runs the versions the tests ran.
# Run it after any change to the dependencies in pyproject.toml:
#   bash docker/lock.sh              # keeps the locked versions that still fit
#   bash docker/lock.sh --upgrade    # moves every package to its newest allowed version
# Extra arguments go to `uv pip compile` (uv: `pip install uv`). Each lock is written to a
# temporary file first, so a failure leaves the old lock as it was.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The Python of the base image (python:3.11-slim-bookworm: Debian 12, glibc 2.36) and its
# platform, so the locks hold the wheels that install there.
PYTHON_VERSION=3.11
PLATFORM=x86_64-manylinux_2_36
# What the steps of the light and CPU images and the server import, by distribution name
# (tests/test_images.py holds these locks to what `python -m pipeline.image_check` imports).
# prometheus-client: the CPU image's canary review reads a server's /metrics.
LIGHT_PACKAGES="kfp google-cloud-aiplatform google-cloud-storage gcsfs fsspec numpy pillow pyyaml"
CPU_PACKAGES="$LIGHT_PACKAGES matplotlib apache-beam tensorflow prometheus-client"
# kfp: the serving image also runs one pipeline step, infra validation (KFP's executor).
SERVING_PACKAGES="fsspec gcsfs numpy pillow starlette uvicorn httptools uvloop prometheus-client pyyaml kfp"

if ! command -v uv >/dev/null; then
  echo "lock.sh: uv not found; install it with: pip install uv" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

compile() { # compile OUTPUT [uv arguments...]: the lock, or the old one left alone on failure
  local output=$1
  shift
  rm -f "$tmp/lock"
  # uv keeps the versions of the file it writes where they still fit.
  [[ -f $output ]] && cp "$output" "$tmp/lock"
  uv pip compile --quiet --python-version "$PYTHON_VERSION" --python-platform "$PLATFORM" \
    --custom-compile-command "bash docker/lock.sh" --output-file "$tmp/lock" "$@"
  mv "$tmp/lock" "$output"
}

# pyproject.toml's dependencies, filtered: `requirements NAMES` keeps those NAMES (all if
# none), TensorFlow as its CPU build.
requirements() {
  python3 - "$@" <<'PY'
import sys, tomllib
from packaging.requirements import Requirement
wanted = set(sys.argv[1:])
for line in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    requirement = Requirement(line)
    if requirement.name == "tensorflow":
        if not wanted or "tensorflow" in wanted:
            print(f"tensorflow-cpu{requirement.specifier}")
    elif not wanted or requirement.name in wanted:
        print(line)
PY
}

compile docker/requirements.lock pyproject.toml --extra gpu --extra dataflow "$@"
# The other inputs go through standard input, so the locks name no temporary file; each is
# made first (a failure stops here, before uv could lock an empty input).
# Beam's Dataflow extra as pyproject.toml names it, for the CPU image's preprocess on Dataflow.
dataflow=$(python3 -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["dataflow"])')
# shellcheck disable=SC2086 # the package lists are words
cpu=$(requirements $CPU_PACKAGES)
compile docker/cpu-requirements.lock - --constraint docker/requirements.lock "$@" <<<"$cpu
$dataflow"
light=$(requirements $LIGHT_PACKAGES)
compile docker/light-requirements.lock - --constraint docker/requirements.lock "$@" <<<"$light"
# shellcheck disable=SC2086
serving=$(requirements $SERVING_PACKAGES tensorflow)
compile docker/serving-requirements.lock - --constraint docker/requirements.lock "$@" <<<"$serving"
