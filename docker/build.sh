#!/usr/bin/env bash
# Build the image the pipeline's components run in (docker/Dockerfile) and the serving image
# (docker/Dockerfile.serving), and push them to Artifact Registry as
# REGION-docker.pkg.dev/PROJECT/REPOSITORY/beer-{pipeline,serving}:VERSION, VERSION being
# pyproject.toml's version. The defaults give the image compiled into pipeline.yaml and the one
# the upload step registers (components/__init__.py: PIPELINE_IMAGE, SERVING_IMAGE);
# tests/test_docker.py keeps them equal.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bash docker/build.sh [OPTIONS]

Build docker/Dockerfile (the pipeline image) and docker/Dockerfile.serving (the serving image)
and push them to Artifact Registry, tagged with pyproject.toml's version:
  ${REGION}-docker.pkg.dev/${PROJECT}/${REPOSITORY}/beer-pipeline:${VERSION}
  ${REGION}-docker.pkg.dev/${PROJECT}/${REPOSITORY}/beer-serving:${VERSION}

Options (each also read from the environment variable named in capitals):
  --project PROJECT        Google Cloud project of the registry (default: your-project)
  --region REGION          Artifact Registry location, e.g. us, europe-west4 (default: us)
  --repository REPOSITORY  Artifact Registry Docker repository (default: beer-pipeline)
  --print-uri              print the pipeline image's URI and exit (needs neither docker nor gcloud)
  --print-serving-uri      print the serving image's URI and exit
  --no-push                build with the local Docker engine, do not push
  --cloud-build            build and push with Cloud Build instead (needs gcloud, not docker)
  -h, --help               show this help

Then compile the pipeline for that image: python -m pipeline.compile --image URI, and run it
with --param serving_image=SERVING_URI unless both URIs are the defaults.
EOF
}

die() {
  echo "build.sh: $*" >&2
  exit 1
}

PROJECT=${PROJECT:-your-project}
REGION=${REGION:-us}
REPOSITORY=${REPOSITORY:-beer-pipeline}
MODE=push
while (($#)); do
  case $1 in
    --project) PROJECT=${2:?--project needs a value} && shift 2 ;;
    --region) REGION=${2:?--region needs a value} && shift 2 ;;
    --repository) REPOSITORY=${2:?--repository needs a value} && shift 2 ;;
    --print-uri) MODE=print-uri && shift ;;
    --print-serving-uri) MODE=print-serving-uri && shift ;;
    --no-push) MODE=no-push && shift ;;
    --cloud-build) MODE=cloud-build && shift ;;
    -h | --help) usage && exit 0 ;;
    *) usage >&2 && die "unknown argument: $1" ;;
  esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The version of [project] in pyproject.toml (no TOML parser in Python 3.10's standard library).
VERSION=$(awk -F'"' '/^\[/ { in_project = ($0 == "[project]") }
  in_project && /^version *=/ { print $2; exit }' "$ROOT/pyproject.toml")
[[ -n $VERSION ]] || die "no version in the [project] table of $ROOT/pyproject.toml"
HOST=$REGION-docker.pkg.dev
IMAGE=$HOST/$PROJECT/$REPOSITORY/beer-pipeline:$VERSION
SERVING_IMAGE=$HOST/$PROJECT/$REPOSITORY/beer-serving:$VERSION

case $MODE in
  print-uri)
    echo "$IMAGE"
    ;;
  print-serving-uri)
    echo "$SERVING_IMAGE"
    ;;
  cloud-build)
    command -v gcloud >/dev/null || die "gcloud not found: install the Google Cloud CLI"
    gcloud builds submit "$ROOT" --project "$PROJECT" --config "$ROOT/docker/cloudbuild.yaml" \
      --substitutions "_REGION=$REGION,_REPOSITORY=$REPOSITORY,_VERSION=$VERSION"
    ;;
  push | no-push)
    command -v docker >/dev/null ||
      die "docker not found: install Docker, or build with --cloud-build (no Docker needed)"
    docker info >/dev/null 2>&1 ||
      die "no Docker engine answers ('docker info' fails): start it, or use --cloud-build"
    if [[ $MODE == push ]]; then
      # Checked before the long build: pushing needs gcloud's credential helper for the host.
      command -v gcloud >/dev/null ||
        die "gcloud not found: it authenticates the push to $HOST (or build with --no-push)"
      gcloud auth configure-docker "$HOST" --quiet
    fi
    # BuildKit reads docker/<Dockerfile>.dockerignore; Vertex AI runs linux/amd64 machines.
    for pair in "Dockerfile=$IMAGE" "Dockerfile.serving=$SERVING_IMAGE"; do
      DOCKER_BUILDKIT=1 docker build --platform linux/amd64 -f "$ROOT/docker/${pair%%=*}" \
        --label "org.opencontainers.image.version=$VERSION" -t "${pair#*=}" "$ROOT"
    done
    for uri in "$IMAGE" "$SERVING_IMAGE"; do
      if [[ $MODE == push ]]; then
        docker push "$uri"
        echo "pushed $uri"
      else
        echo "built $uri"
      fi
    done
    ;;
esac
