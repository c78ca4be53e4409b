"""How kfp.local runs the steps of a local run: as subprocesses of this environment (the
default), or each step in its role's image through a Docker-compatible engine (``docker``), as
Vertex AI runs them: what the images hold, and as their non-root user.

``docker`` talks to the engine at ``DOCKER_HOST`` (Docker, or podman's Docker-compatible
service: ``podman system service --time=0 unix:///PATH.sock``). The images are the ones
``bash docker/build.sh --registry localhost --no-push`` builds, unless named. The steps read the
data and write the local registry under the state folder, so both are mounted at their own
paths, and the steps run as the state folder's owner (uid 1000 is the images' own user):
never as root.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from components.images import NAME, VERSION, ImageSet

SUBPROCESS = "subprocess"
DOCKER = "docker"
RUNNERS = (SUBPROCESS, DOCKER)

STEP_LABEL = "image-classifier.local-step"
"""The label of a step's container (value: the image), which tells it from other containers of
the same images (the Vertex AI emulator runs the serving image too)."""

LOCAL_IMAGES = ImageSet.beside(f"localhost/{NAME}:{VERSION}")
"""What ``bash docker/build.sh --registry localhost --no-push`` builds. ``localhost/``: with a
short name kfp would try to pull each image first."""


class RunnerError(ValueError):
    """Settings that a runner cannot work with; one line."""


def kfp_runner(kind: str, state_dir: str, pipeline_root: str, mounts: Iterable[str] = ()) -> Any:
    """The kfp.local runner of ``kind``. For ``docker``: ``mounts`` are host folders the steps
    see at the same path (with ``state_dir``; kfp mounts ``pipeline_root`` itself), and the
    steps run as ``state_dir``'s owner."""
    import kfp.local

    if kind == SUBPROCESS:
        return kfp.local.SubprocessRunner(use_venv=False)
    if kind != DOCKER:
        raise RunnerError(f"runner must be one of {RUNNERS}, got {kind!r}")
    from kfp.local import docker_task_handler

    import docker

    owner = os.stat(state_dir)
    if owner.st_uid == 0:
        raise RunnerError(
            f"the state folder {state_dir} belongs to root, and the steps never run as root: "
            f"give it to the images' user (chown -R 1000 {state_dir}) or use a folder of yours"
        )
    # kfp mounts the pipeline root: made by the engine, it would be root's.
    os.makedirs(pipeline_root, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(pipeline_root, owner.st_uid, owner.st_gid)
    # kfp 2.17 starts each step with auto_remove=True and reads its logs and exit status
    # afterwards: an engine that removes the container first (podman always, Docker when the
    # step is quick) makes the run crash, or report a failed step as a success
    # (kubeflow/pipelines#13332). This runs it detached and removes it after reading both.
    docker_task_handler.run_docker_container = run_container
    return kfp.local.DockerRunner(
        user=f"{owner.st_uid}:{owner.st_gid}",
        mounts=[
            docker.types.Mount(target=path, source=path, type="bind")
            for path in sorted({os.path.realpath(path) for path in [state_dir, *mounts]})
        ],
    )


def run_container(
    client: Any, image: str, command: list[str], volumes: dict[str, Any], **run_args: Any
) -> int:
    """Run one step's container to its end, its command in place of the image's ENTRYPOINT;
    print its output; return its exit status."""
    from kfp.local.docker_task_handler import add_latest_tag_if_not_present

    image = add_latest_tag_if_not_present(image)
    if not client.images.list(name=image):
        print(f"Pulling image {image!r}")
        client.images.pull(image)
    # The step's command replaces the image's ENTRYPOINT, as Kubernetes' `command` does on
    # Vertex AI; kfp passes it as Docker's CMD, which would become arguments of the serving
    # image's ENTRYPOINT (`python -m pipeline.serve sh -c ...`).
    container = client.containers.run(
        image=image,
        entrypoint=command,
        command=[],
        detach=True,
        volumes=volumes,
        labels={STEP_LABEL: image},
        **run_args,
    )
    try:
        for line in container.logs(stream=True, follow=True):
            print(line.decode(errors="replace"), end="")
        return int(container.wait()["StatusCode"])
    finally:
        container.remove(force=True)
