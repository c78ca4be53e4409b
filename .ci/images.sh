#!/usr/bin/env bash
# Build the project's images from docker/ UNCHANGED, on a machine with no Docker engine and no
# Docker Hub (CI: 2 cores, root, Debian's packages and PyPI only), with podman:
#
#   bash .ci/images.sh [--tools] [--base] [--build]   (default: all three steps)
#
# - tools: podman + runc + mmdebstrap from Debian (runc: crun 1.8 refuses these machines'
#   hybrid cgroups);
# - base: the one base image the Dockerfiles name, python:3.11-slim-bookworm, is replaced by a
#   local stand-in of the same name: Debian 12 with its python3 (3.11), pip and a `python`
#   command, made by mmdebstrap from Debian's mirrors and imported into podman's store, so that
#   `FROM python:3.11-slim-bookworm` resolves locally (--pull=never);
# - build: `podman build` of each docker/Dockerfile*, tagged localhost/<name>:<version> (the
#   names docker/build.sh gives them, in the registry `localhost`).
#
# Podman's settings and store live under $IMAGE_CLASSIFIER_CONTAINERS (default
# /var/tmp/image-classifier-containers); source .ci/podman-env.sh to use the same store from a
# shell or a test.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=podman-env.sh
source "$ROOT/.ci/podman-env.sh"
step() { printf '[%s] images: %s\n' "$(date +%T)" "$*"; }

tools() {
  local need=() tool
  for tool in mmdebstrap podman runc; do command -v "$tool" >/dev/null || need+=("$tool"); done
  if ((${#need[@]})); then
    step "installing ${need[*]} from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  podman_conf
}

base() {
  local name=docker.io/library/python:3.11-slim-bookworm rootfs=$IMAGE_CLASSIFIER_CONTAINERS/rootfs
  if podman image exists "$name"; then
    step "base stand-in $name: already in the store"
    return
  fi
  step "base stand-in $name: Debian 12 + python3.11 + pip (mmdebstrap)"
  local sources=() f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -s $f ]] && sources+=("$f")
  done
  ((${#sources[@]})) || { echo "images.sh: no apt sources on this machine for mmdebstrap" >&2; exit 1; }
  rm -rf --one-file-system "$rootfs"
  mmdebstrap --quiet --variant=minbase \
    --include=python3,python3-pip,python3-venv,python-is-python3,ca-certificates \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$rootfs" "${sources[@]}"
  for f in proc sys dev; do mountpoint -q "$rootfs/$f" && umount -l "$rootfs/$f" || true; done
  # As in the official image: pip may install into the system Python (no PEP 668 marker), and
  # trusts the CAs this machine trusts (PyPI may be reached through a TLS-inspecting proxy).
  rm -f "$rootfs"/usr/lib/python3.*/EXTERNALLY-MANAGED
  cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
  chroot "$rootfs" update-ca-certificates >/dev/null
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$rootfs/etc/pip.conf"
  tar --one-file-system -C "$rootfs" -c . | podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$name" >/dev/null
  rm -rf --one-file-system "$rootfs"
}

build() {
  local role dockerfile uri start
  while read -r role dockerfile uri; do
    start=$SECONDS
    step "podman build -f docker/$dockerfile -t $uri"
    podman build --quiet --pull=never --network host --ignorefile "$ROOT/docker/$dockerfile.dockerignore" \
      -f "$ROOT/docker/$dockerfile" -t "$uri" "$ROOT" >/dev/null
    step "$role image built in $((SECONDS - start)) s: $(podman image inspect "$uri" --format '{{.Size}}') bytes"
    # The build stage (the venv before its copy) is a dangling image of several GB: disk.
    podman image prune --force >/dev/null
  done < <(bash "$ROOT/docker/build.sh" --registry localhost --print-images)
}

steps=()
while (($#)); do
  case $1 in
    --tools | --base | --build) steps+=("${1#--}") && shift ;;
    *) echo "images.sh: unknown argument $1" >&2 && exit 2 ;;
  esac
done
((${#steps[@]})) || steps=(tools base build)
for s in "${steps[@]}"; do "$s"; done
