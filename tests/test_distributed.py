"""Training that scales out and survives preemption, with the train step's own code on the beer
TFRecords: two workers under MultiWorkerMirroredStrategy on loopback, and a run killed after a
checkpoint that resumes from it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 64
CONFIG = {
    "backbone": "efficientnet-lite0",
    "epochs": 2,
    "learning_rate": 0.01,
    "fine_tune_epochs": 1,
    "fine_tune_learning_rate": 3e-4,
    "fine_tune_from_block": 14,
    "batch_size": 16,
    "dropout": 0.2,
    "label_smoothing": 0.1,
    "brightness_contrast": 0.2,
    "early_stopping_patience": 0,
    "imbalance_ratio": 1.5,
    "seed": 42,
    "export_tflite": False,
}


@pytest.fixture(scope="module")
def beer_inputs(beer_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The preprocess and features steps' outputs for the beer photos, at a small image size."""
    from components.lib.data.records import preprocess_dataset
    from components.lib.modelling.features import extract_features

    work = tmp_path_factory.mktemp("beer-inputs")
    dataset = preprocess_dataset(
        str(beer_data_dir), str(work / "dataset"), IMAGE_SIZE, validation_fraction=0.1
    )
    extract_features(dataset, str(work / "features"))
    return {"dataset": str(work / "dataset"), "features": str(work / "features")}


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def start_worker(
    work: Path, name: str, inputs: dict[str, str], config: dict, tf_config: dict | None = None
) -> tuple[subprocess.Popen, dict[str, str]]:
    """Start tests/train_worker.py as one process of a training job; returns it and its paths."""
    settings = inputs | {
        "pipeline_root": str(work / "pipeline-root"),
        "model": str(work / name / "model"),
        "metadata": str(work / name / "metadata.json"),
        "config": config,
        "log": str(work / name / "log.txt"),
    }
    (work / name).mkdir(parents=True, exist_ok=True)
    settings_path = work / name / "settings.json"
    settings_path.write_text(json.dumps(settings))
    env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    env["PYTHONPATH"] = str(REPO)
    if tf_config:
        env["TF_CONFIG"] = json.dumps(tf_config)
    with open(settings["log"], "w") as log:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "train_worker.py"), str(settings_path)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return process, settings


def finish(process: subprocess.Popen, settings: dict[str, str], timeout: float = 600) -> str:
    try:
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
    log = Path(settings["log"]).read_text()
    assert process.returncode == 0, log[-3000:]
    return log


def test_two_workers_train_together_and_only_the_chief_exports(
    beer_inputs: dict[str, str], tmp_path: Path
) -> None:
    from components.lib.serving.prediction import ServingModel

    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = [
        start_worker(
            tmp_path,
            f"worker-{index}",
            beer_inputs,
            CONFIG,
            {"cluster": cluster, "task": {"type": "worker", "index": index}},
        )
        for index in range(2)
    ]
    logs = [finish(process, settings) for process, settings in workers]

    for log in logs:
        assert "multi-worker training: 2 replicas on 2 machines" in log
    metadata = [json.loads(Path(s["metadata"]).read_text()) for _, s in workers]
    assert [m["replicas"] for m in metadata] == [2, 2]
    # Synchronous data parallelism: both workers saw the same global losses, epoch by epoch.
    assert metadata[0]["history"] == metadata[1]["history"]
    assert len(metadata[0]["history"]["head_loss"]) == CONFIG["epochs"]
    assert len(metadata[0]["history"]["fine_tune_loss"]) == CONFIG["fine_tune_epochs"]

    chief_model, worker_model = (Path(s["model"]) for _, s in workers)
    assert (chief_model / "saved_model.pb").is_file()
    assert not worker_model.exists() or not any(worker_model.iterdir())
    assert not list((tmp_path / "pipeline-root" / "checkpoints").glob("train-*/*"))

    images = sorted((Path(os.environ["BEER_DATA_DIR"]) / "eval").glob("*/*"))[::20]
    predictions = ServingModel(str(chief_model)).predict([p.read_bytes() for p in images])
    probabilities = np.asarray(predictions.probabilities)
    assert probabilities.shape == (len(images), 5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    assert set(np.asarray(predictions.classes)) <= set(range(5))


def test_a_killed_training_resumes_from_its_last_checkpoint(
    beer_inputs: dict[str, str], tmp_path: Path
) -> None:
    config = CONFIG | {"fine_tune_epochs": 8}
    process, settings = start_worker(tmp_path, "first", beer_inputs, config)
    checkpoints = tmp_path / "pipeline-root" / "checkpoints"
    deadline = time.monotonic() + 600
    while not list(checkpoints.glob("train-*/fine_tune/latest/checkpoint")):
        assert process.poll() is None, Path(settings["log"]).read_text()[-3000:]
        assert time.monotonic() < deadline, "no fine-tuning checkpoint within 10 minutes"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    first_log = Path(settings["log"]).read_text()
    assert "fine_tune epoch 8/8" not in first_log

    process, settings = start_worker(tmp_path, "second", beer_inputs, config)
    second_log = finish(process, settings)

    resumed = [line for line in second_log.splitlines() if "fine_tune: resuming" in line]
    assert len(resumed) == 1, second_log[-3000:]
    resumed_epoch = int(resumed[0].rsplit("epoch ", 1)[1].split("/")[0])
    assert resumed_epoch >= 2
    assert f"fine_tune epoch {resumed_epoch - 1}/8" in first_log
    assert f"fine_tune epoch {resumed_epoch - 1}/8" not in second_log
    assert "head: finished before, weights from the checkpoint" in second_log
    assert "head epoch" not in second_log
    history = json.loads(Path(settings["metadata"]).read_text())["history"]
    assert len(history["head_loss"]) == 2
    assert len(history["fine_tune_loss"]) == 8
    assert (Path(settings["model"]) / "saved_model.pb").is_file()
    assert not list(checkpoints.glob("train-*/*"))
