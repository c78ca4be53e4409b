"""Which tf.distribute strategy a training process runs under, and whether it is the chief.

Vertex AI custom training jobs describe the cluster in ``TF_CONFIG`` (and ``CLUSTER_SPEC``): the
chief is worker pool 0, the other workers are pool 1. One process per machine drives all its GPUs.
"""

from __future__ import annotations

import json
import logging
import os

import tensorflow as tf

from components.lib.modelling.accelerator import require_usable_gpu

logger = logging.getLogger(__name__)

# Vertex AI's worker pool names in CLUSTER_SPEC, in TF_CONFIG's task types.
_VERTEX_POOLS = {"workerpool0": "chief", "workerpool1": "worker"}
# Tensor cores (float16 matrix units) arrived with Volta.
_MIN_MIXED_PRECISION_CAPABILITY = (7, 0)


def cluster_from_environment() -> dict | None:
    """The ``TF_CONFIG`` of this process: from ``TF_CONFIG``, else translated from Vertex AI's
    ``CLUSTER_SPEC``; None on a single machine."""
    if os.environ.get("TF_CONFIG"):
        return json.loads(os.environ["TF_CONFIG"])
    if not os.environ.get("CLUSTER_SPEC"):
        return None
    spec = json.loads(os.environ["CLUSTER_SPEC"])
    cluster = {
        _VERTEX_POOLS[pool]: addresses
        for pool, addresses in spec["cluster"].items()
        if pool in _VERTEX_POOLS
    }
    task = spec["task"]
    return {
        "cluster": cluster,
        "task": {"type": _VERTEX_POOLS[task["type"]], "index": task["index"]},
    }


def _machines(tf_config: dict | None) -> int:
    return sum(len(addresses) for addresses in (tf_config or {}).get("cluster", {}).values())


def training_strategy() -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy across machines, MirroredStrategy across the GPUs of one
    machine, else the default (one device) strategy. Refuses to train on the CPU of a machine
    whose GPU TensorFlow cannot use (``accelerator.require_usable_gpu``)."""
    require_usable_gpu()
    tf_config = cluster_from_environment()
    if _machines(tf_config) > 1:
        os.environ["TF_CONFIG"] = json.dumps(tf_config)
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        logger.info(
            "multi-worker training: %d replicas on %d machines, this is %s %d",
            strategy.num_replicas_in_sync,
            _machines(tf_config),
            tf_config["task"]["type"],
            tf_config["task"]["index"],
        )
        return strategy
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        logger.info("training on the %d GPUs of this machine", len(gpus))
        return tf.distribute.MirroredStrategy()
    logger.info("training on %s", gpus[0].name if gpus else "the CPU")
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the process that writes the model and checkpoints: the chief, or worker 0 of a
    cluster without one, or the only process."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def worker_id(strategy: tf.distribute.Strategy) -> str:
    """A name for this process that is unique in the cluster (for its scratch files)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return "chief"
    return f"{resolver.task_type}-{resolver.task_id}"


def supports_mixed_precision() -> bool:
    """True when every GPU has tensor cores (compute capability 7.0 or higher, e.g. T4, V100,
    A100, L4, H100): float16 compute then runs several times faster. False on CPU."""
    gpus = tf.config.list_physical_devices("GPU")
    capabilities = [
        tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
        for gpu in gpus
    ]
    return bool(gpus) and all(c >= _MIN_MIXED_PRECISION_CAPABILITY for c in capabilities)
