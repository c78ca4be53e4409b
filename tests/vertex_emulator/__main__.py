"""``python -m tests.vertex_emulator``: run the Vertex AI emulator by hand, and say how to use it.

Starts the emulator on loopback (gRPC with a fresh self-signed certificate, REST predictions on a
second port) over the GCS emulator at ``--gcs-emulator`` (or one it starts), then prints the
environment and the ``aiplatform.init`` settings that point the SDK and this project at it.
Stops on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import threading
from pathlib import Path

from tests.vertex_emulator import (
    CloudStorage,
    VertexEmulator,
    start_gcs_emulator,
    write_self_signed_certificate,
)


def _custom_image(text: str) -> tuple[str, list[str]]:
    prefix, separator, command = text.partition("=")
    if not separator or not prefix or not command:
        raise argparse.ArgumentTypeError(f"{text!r} is not IMAGE_PREFIX=COMMAND")
    return prefix, shlex.split(command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.vertex_emulator", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="gRPC port (default: a free one)")
    parser.add_argument("--rest-port", type=int, default=0, help="REST port (default: free)")
    parser.add_argument(
        "--gcs-emulator",
        help="URL of a running gcp-storage-emulator (default: start one, in memory)",
    )
    parser.add_argument(
        "--project", action="append", help="project IDs it knows (default test-project)"
    )
    parser.add_argument("--location", default="europe-west4", help="region to print (%(default)s)")
    parser.add_argument(
        "--mount-root",
        help="folder that stands in for the /gcs/ FUSE mount of the GCS emulator "
        "(default: a temporary one); export it as IMAGE_CLASSIFIER_GCS_MOUNT_ROOT",
    )
    parser.add_argument(
        "--bucket",
        action="append",
        default=[],
        help="create this bucket in the GCS emulator, mounted under the mount root (repeatable)",
    )
    parser.add_argument(
        "--operation-delay",
        type=float,
        default=1.0,
        help="seconds before a long-running operation finishes (%(default)s)",
    )
    parser.add_argument(
        "--custom-image",
        action="append",
        type=_custom_image,
        default=[],
        metavar="IMAGE_PREFIX=COMMAND",
        help="run models whose image starts with IMAGE_PREFIX as COMMAND (a custom container "
        "given the AIP_* variables), e.g. 'europe-docker.pkg.dev/p/r/serve=python -m "
        "pipeline.serve'",
    )
    args = parser.parse_args(argv)
    projects = args.project or ["test-project"]

    gcs_process = None
    gcs_url = args.gcs_emulator
    if not gcs_url:
        gcs_process, gcs_url = start_gcs_emulator()
    work = Path(tempfile.mkdtemp(prefix="vertex-emulator-"))
    mount_root = os.path.abspath(args.mount_root or work / "gcs")
    os.makedirs(mount_root, exist_ok=True)
    cert, key = write_self_signed_certificate(work)
    storage = CloudStorage(gcs_url, mount_root=mount_root)
    for bucket in args.bucket:
        if storage.client.lookup_bucket(bucket) is None:
            storage.client.create_bucket(bucket)
        os.makedirs(os.path.join(mount_root, bucket), exist_ok=True)
    emulator = VertexEmulator(
        projects=projects,
        storage=storage,
        operation_delay_s=args.operation_delay,
        custom_images=dict(args.custom_image),
    ).start(cert, key, port=args.port, rest_port=args.rest_port)
    host = f"localhost:{emulator.port}"
    buckets = ", ".join(args.bucket) or "none"
    numbers = ", ".join(f"{p} = {emulator.project_number(p)}" for p in projects)
    print(
        f"""Vertex AI emulator: gRPC (TLS) on {host}, REST predictions on http://127.0.0.1:{emulator.rest_port}
GCS emulator: {gcs_url}; stand-in /gcs mount: {mount_root}; buckets made: {buckets}
projects (ID = number in resource names): {numbers}

In the shell that runs the pipeline or the SDK:
  export GRPC_DEFAULT_SSL_ROOTS_FILE_PATH={cert}
  export IMAGE_CLASSIFIER_VERTEX_EMULATOR_HOST={host}
  export STORAGE_EMULATOR_HOST={gcs_url}
  export IMAGE_CLASSIFIER_GCS_MOUNT_ROOT={mount_root}
  export GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false

In Python:
  from google.auth.credentials import AnonymousCredentials
  from google.cloud import aiplatform
  aiplatform.init(project="{projects[0]}", location="{args.location}", api_endpoint="{host}",
                  credentials=AnonymousCredentials())

Predictions over REST:
  curl -s -X POST -H 'Content-Type: application/json' -d @test.json \\
    http://127.0.0.1:{emulator.rest_port}/v1/projects/{projects[0]}/locations/{args.location}/endpoints/ENDPOINT_ID:predict

Ctrl-C stops it.""",
        flush=True,
    )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
        if gcs_process is not None:
            gcs_process.terminate()
            gcs_process.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
