#!/usr/bin/env bash
# Build the pipeline's images from docker/ and push them to Artifact Registry, named by the rule
# of components/images.py (tests/test_docker.py keeps the two equal):
#   REGION-docker.pkg.dev/PROJECT/REPOSITORY/image-classifier:VERSION          GPU steps (Dockerfile)
#   REGION-docker.pkg.dev/PROJECT/REPOSITORY/image-classifier-cpu:VERSION      Dockerfile.cpu
#   REGION-docker.pkg.dev/PROJECT/REPOSITORY/image-classifier-light:VERSION    Dockerfile.light
#   REGION-docker.pkg.dev/PROJECT/REPOSITORY/image-classifier-serving:VERSION  Dockerfile.serving
# VERSION is pyproject.toml's version.
set -euo pipefail

usage() {
  cat <<'EOF_USAGE'
Usage: bash docker/build.sh --project PROJECT [OPTIONS]

Build docker/Dockerfile (GPU steps), Dockerfile.cpu (preprocess, evaluate), Dockerfile.light
(the steps without TensorFlow) and Dockerfile.serving (the model's container) and push them to
Artifact Registry, tagged with pyproject.toml's version, as
  ${REGION}-docker.pkg.dev/${PROJECT}/${REPOSITORY}/image-classifier{,-cpu,-light,-serving}:${VERSION}

Options (each also read from the environment variable named in capitals):
  --project PROJECT        Google Cloud project of the registry (required)
  --region REGION          Artifact Registry location, e.g. us, europe-west4 (default: us)
  --repository REPOSITORY  Artifact Registry Docker repository (default: image-classifier)
  --registry PREFIX        name the images PREFIX/image-classifier...:VERSION instead, e.g.
                           localhost for a local build (no project needed)
  --print-uri              print the GPU image's URI (what --image takes) and exit
  --print-images           print "ROLE DOCKERFILE URI" for each image and exit
  --no-push                build with the local Docker engine, do not push
  --cloud-build            build and push with Cloud Build instead (needs gcloud, not docker)
  -h, --help               show this help

Then compile the pipeline for them: python -m pipeline.compile --image GPU_URI (the other three
are named beside it), or run it: python -m pipeline.run --image GPU_URI ...
EOF_USAGE
}

die() {
  echo "build.sh: $*" >&2
  exit 1
}

PROJECT=${PROJECT:-}
REGION=${REGION:-us}
REPOSITORY=${REPOSITORY:-image-classifier}
REGISTRY=${REGISTRY:-}
MODE=push
while (($#)); do
  case $1 in
    --project) PROJECT=${2:?--project needs a value} && shift 2 ;;
    --region) REGION=${2:?--region needs a value} && shift 2 ;;
    --repository) REPOSITORY=${2:?--repository needs a value} && shift 2 ;;
    --registry) REGISTRY=${2:?--registry needs a value} && shift 2 ;;
    --print-uri) MODE=print-uri && shift ;;
    --print-images) MODE=print-images && shift ;;
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
if [[ -z $REGISTRY ]]; then
  [[ -n $PROJECT ]] || die "--project is required: the Google Cloud project whose Artifact Registry holds the images (or PROJECT=...)"
  [[ $MODE == cloud-build ]] || REGISTRY=$REGION-docker.pkg.dev/$PROJECT/$REPOSITORY
elif [[ $MODE == cloud-build ]]; then
  die "--registry names a local build; --cloud-build pushes to Artifact Registry (give --project)"
fi
# role dockerfile name-suffix, in build order (the GPU image, biggest, last)
IMAGES="light Dockerfile.light -light
serving Dockerfile.serving -serving
cpu Dockerfile.cpu -cpu
gpu Dockerfile "
images() { # role dockerfile uri, one line each
  local role dockerfile suffix
  while read -r role dockerfile suffix; do
    echo "$role $dockerfile $REGISTRY/image-classifier$suffix:$VERSION"
  done <<<"$IMAGES"
}

case $MODE in
  print-uri)
    echo "$REGISTRY/image-classifier:$VERSION"
    ;;
  print-images)
    images
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
    # BuildKit reads docker/<Dockerfile>.dockerignore (the legacy builder would send the whole
    # tree, virtual environments included); Docker 23+ builds with BuildKit through buildx.
    docker buildx version >/dev/null 2>&1 ||
      die "docker buildx not found: install Docker's buildx plugin (Debian/Ubuntu: apt-get install docker-buildx-plugin, or docker-buildx), or use --cloud-build"
    if [[ $MODE == push ]]; then
      # Checked before the long build: pushing needs gcloud's credential helper for the host.
      command -v gcloud >/dev/null ||
        die "gcloud not found: it authenticates the push to ${REGISTRY%%/*} (or build with --no-push)"
      gcloud auth configure-docker "${REGISTRY%%/*}" --quiet
    fi
    # Vertex AI runs linux/amd64 machines.
    while read -r role dockerfile uri; do
      docker buildx build --load --platform linux/amd64 -f "$ROOT/docker/$dockerfile" \
        --label "org.opencontainers.image.version=$VERSION" -t "$uri" "$ROOT"
      echo "built $role image $uri"
    done < <(images)
    if [[ $MODE == push ]]; then
      while read -r _ _ uri; do
        docker push "$uri"
        echo "pushed $uri"
      done < <(images)
    fi
    ;;
esac
