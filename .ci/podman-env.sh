# Podman without systemd or a Docker engine, for CI and the container tests; source it.
# On these machines: cgroupfs, runc (crun 1.8 refuses hybrid cgroups), the host's network for
# `podman run` (no bridge, no NAT), rlimits no higher than the hard limits the runtime inherits
# (there is no CAP_SYS_RESOURCE), and a store of its own under $IMAGE_CLASSIFIER_CONTAINERS.
export IMAGE_CLASSIFIER_CONTAINERS=${IMAGE_CLASSIFIER_CONTAINERS:-/var/tmp/image-classifier-containers}
export CONTAINERS_CONF=$IMAGE_CLASSIFIER_CONTAINERS/containers.conf
export CONTAINERS_STORAGE_CONF=$IMAGE_CLASSIFIER_CONTAINERS/storage.conf

podman_conf() {
  mkdir -p "$IMAGE_CLASSIFIER_CONTAINERS"
  local nofile
  nofile=$(ulimit -Hn)
  if [[ $nofile == unlimited ]] || ((nofile > 8192)); then nofile=8192; fi
  cat >"$CONTAINERS_CONF" <<CONF
[containers]
netns = "host"
default_ulimits = ["nofile=$nofile:$nofile", "nproc=4096:4096"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
CONF
  cat >"$CONTAINERS_STORAGE_CONF" <<CONF
[storage]
driver = "overlay"
graphroot = "$IMAGE_CLASSIFIER_CONTAINERS/storage"
runroot = "$IMAGE_CLASSIFIER_CONTAINERS/run"
CONF
}
