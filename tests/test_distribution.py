"""Which process is the chief, the cluster Vertex AI describes, and where checkpoints go."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import tensorflow as tf

from components.lib.modelling.distribution import (
    cluster_from_environment,
    is_chief,
    training_strategy,
    worker_id,
)
from components.lib.modelling.training import checkpoint_directory


def strategy_of(cluster: dict, task_type: str, task_id: int) -> SimpleNamespace:
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id
    )
    return SimpleNamespace(cluster_resolver=resolver)


def test_vertex_cluster_spec_becomes_a_tf_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.setenv(
        "CLUSTER_SPEC",
        json.dumps(
            {
                "cluster": {
                    "workerpool0": ["cmle-0:2222"],
                    "workerpool1": ["w-0:2222", "w-1:2222"],
                },
                "environment": "cloud",
                "task": {"type": "workerpool1", "index": 1},
            }
        ),
    )
    assert cluster_from_environment() == {
        "cluster": {"chief": ["cmle-0:2222"], "worker": ["w-0:2222", "w-1:2222"]},
        "task": {"type": "worker", "index": 1},
    }


def test_tf_config_wins_and_one_machine_has_no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    config = {"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    monkeypatch.setenv("CLUSTER_SPEC", "{not read}")
    assert cluster_from_environment() == config
    monkeypatch.delenv("TF_CONFIG")
    monkeypatch.delenv("CLUSTER_SPEC")
    assert cluster_from_environment() is None
    # One machine without GPUs: the default strategy, one replica, and it is the chief.
    strategy = training_strategy()
    assert strategy.num_replicas_in_sync == 1
    assert is_chief(strategy) and worker_id(strategy) == "chief"


def test_the_chief_is_pool_0_or_else_worker_0() -> None:
    with_chief = {"chief": ["c:1"], "worker": ["w0:1", "w1:1"]}
    assert is_chief(strategy_of(with_chief, "chief", 0))
    assert not is_chief(strategy_of(with_chief, "worker", 0))
    assert worker_id(strategy_of(with_chief, "worker", 1)) == "worker-1"
    workers_only = {"worker": ["w0:1", "w1:1"]}
    assert is_chief(strategy_of(workers_only, "worker", 0))
    assert not is_chief(strategy_of(workers_only, "worker", 1))


def test_checkpoints_live_under_the_pipeline_root_by_inputs() -> None:
    first = checkpoint_directory("gs://bucket/root", dataset="gs://bucket/root/d", config={"a": 1})
    assert first.startswith("/gcs/bucket/root/checkpoints/train-")
    same = checkpoint_directory("gs://bucket/root", config={"a": 1}, dataset="gs://bucket/root/d")
    other = checkpoint_directory("gs://bucket/root", dataset="gs://bucket/root/d", config={"a": 2})
    assert same == first and other != first
    assert checkpoint_directory("/tmp/root", x=1).startswith("/tmp/root/checkpoints/train-")
