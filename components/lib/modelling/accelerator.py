"""Whether TensorFlow can use the GPU this machine was given, and why not.

A GPU image whose CUDA or cuDNN does not match TensorFlow's build registers no GPU, and TensorFlow
then trains on the CPU without complaint: on Vertex AI, hours on the CPU of a paid GPU machine.
So the steps that train or extract features stop with a clear error when the machine has an
NVIDIA GPU (the driver exposes it to the container, as Vertex AI does for a step given an
accelerator) and TensorFlow sees none; the GPU image's build loads the libraries beforehand
(``python -m pipeline.image_check gpu``), which needs no GPU.
"""

from __future__ import annotations

import ctypes
import glob
import os
from importlib import metadata

CUDA_LIBRARIES = (
    "libcudart.so.12",
    "libcublas.so.12",
    "libcublasLt.so.12",
    "libcufft.so.11",
    "libcurand.so.10",
    "libcusolver.so.11",
    "libcusparse.so.12",
    "libnvJitLink.so.12",
    "libcudnn.so.9",
    "libnccl.so.2",
)
"""What TensorFlow's GPU build opens at start (its CUDA 12 / cuDNN 9 build, tf.sysconfig)."""

_RUNTIME = {"cuda_version": "nvidia-cuda-runtime-cu12", "cudnn_version": "nvidia-cudnn-cu12"}


class GPUUnavailableError(RuntimeError):
    """The machine has a GPU that TensorFlow cannot use."""


def gpu_devices(root: str = "/") -> list[str]:
    """The NVIDIA GPUs the kernel exposes to this process (``/proc/driver/nvidia/gpus/*``,
    ``/dev/nvidia0``, ...): what a machine given an accelerator has, whatever TensorFlow sees."""
    found = glob.glob(os.path.join(root, "proc/driver/nvidia/gpus/*"))
    found += [p for p in glob.glob(os.path.join(root, "dev/nvidia*")) if p[-1].isdigit()]
    return sorted(found)


def cuda_problems() -> list[str]:
    """What keeps TensorFlow's GPU build from using a GPU here, one line each: a CUDA library
    that does not load, or an installed CUDA/cuDNN older than TensorFlow's build."""
    import tensorflow as tf

    problems = []
    for library in CUDA_LIBRARIES:
        try:
            ctypes.CDLL(library)
        except OSError as error:
            problems.append(f"{library} does not load: {error}")
    build = tf.sysconfig.get_build_info()
    if not build.get("is_cuda_build"):
        problems.append(f"TensorFlow {tf.__version__} is not a CUDA build (tensorflow-cpu?)")
    for key, distribution in _RUNTIME.items():
        wanted = build.get(key)
        try:
            installed = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            problems.append(f"{distribution} is not installed (TensorFlow wants {key} {wanted})")
            continue
        if wanted and not _compatible(_version(installed), _version(wanted)):
            problems.append(
                f"{distribution} {installed} does not match TensorFlow's {key} {wanted}"
            )
    return problems


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def _compatible(installed: tuple[int, ...], wanted: tuple[int, ...]) -> bool:
    """The same major version, and no older minor (CUDA's minor version compatibility)."""
    known = min(len(wanted), 2)
    return installed[:1] == wanted[:1] and installed[:known] >= wanted[:known]


def require_usable_gpu(root: str = "/") -> None:
    """Raise ``GPUUnavailableError`` when this machine has a GPU and TensorFlow sees none."""
    devices = gpu_devices(root)
    if not devices:
        return
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return
    problems = cuda_problems()
    raise GPUUnavailableError(
        f"this machine has a GPU ({devices[0]}) but TensorFlow {tf.__version__} sees none, so "
        "it would train on the CPU: "
        + ("; ".join(problems) if problems else "check the NVIDIA driver (nvidia-smi)")
        + ". Build the pipeline image from docker/Dockerfile (tensorflow[and-cuda])."
    )
