"""TensorBoard logs of a training, read back from the event files as TensorBoard reads them."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
import tensorflow as tf

from components.lib.modelling.model import TrainingConfig, train_classifier
from components.lib.modelling.tensorboard import LOG_DIR_ENV, TENSORBOARD_DIR, log_dirs


def read_events(run_dir: Path) -> dict[str, list[tuple[int, object]]]:
    """Tag -> [(step, value)] of every event file of one run folder."""
    found: dict[str, list[tuple[int, object]]] = defaultdict(list)
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                tensor = tf.make_ndarray(value.tensor)
                found[value.tag].append((event.step, tensor))
    return found


def test_log_dirs_add_vertex_ais_folder_when_it_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LOG_DIR_ENV, raising=False)
    assert log_dirs("/m") == ["/m/tensorboard"]
    monkeypatch.setenv(LOG_DIR_ENV, "gs://bucket/job/logs/")
    assert log_dirs("/m") == ["/m/tensorboard", "gs://bucket/job/logs/"]


@pytest.mark.slow
def test_training_logs_scalars_per_epoch_over_both_phases_and_augmented_samples_once(
    demo_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from components.lib.data.records import preprocess_dataset

    dataset = preprocess_dataset(
        str(demo_data_dir), str(tmp_path / "records"), image_size=64, validation_fraction=0.125
    )
    monkeypatch.setenv(LOG_DIR_ENV, str(tmp_path / "vertex-logs"))
    model_dir = tmp_path / "model"
    config = TrainingConfig(
        epochs=2, fine_tune_epochs=2, fine_tune_from_block=14, early_stopping_patience=0
    )
    trained = train_classifier(dataset, config, log_dirs=log_dirs(str(model_dir)))

    epochs = len(trained.history["head_loss"]) + len(trained.history["fine_tune_loss"])
    assert epochs == 4
    for root in (model_dir / TENSORBOARD_DIR, tmp_path / "vertex-logs"):
        train = read_events(root / "train")
        validation = read_events(root / "validation")
        for tag in ("epoch_loss", "epoch_accuracy", "epoch_learning_rate"):
            assert [step for step, _ in train[tag]] == [1, 2, 3, 4], tag
        for tag in ("epoch_loss", "epoch_accuracy"):
            assert [step for step, _ in validation[tag]] == [1, 2, 3, 4], tag
        losses = [float(value) for _, value in train["epoch_loss"]]
        history = trained.history["head_loss"] + trained.history["fine_tune_loss"]
        assert losses == pytest.approx(history, rel=1e-5)
        accuracies = [float(value) for _, value in validation["epoch_accuracy"]]
        val_history = (
            trained.history["head_val_accuracy"] + trained.history["fine_tune_val_accuracy"]
        )
        assert accuracies == pytest.approx(val_history, rel=1e-5)
        rates = [float(value) for _, value in train["epoch_learning_rate"]]
        assert rates[:2] == pytest.approx([config.learning_rate] * 2)
        # Fine-tuning's cosine schedule, read after each epoch: lower, then lower still.
        assert config.fine_tune_learning_rate > rates[2] > rates[3] >= 0
        [(step, phases)] = train["phase"][:1]
        assert step == 1 and phases.item().decode().startswith("head: 2 epoch")
        assert [step for step, _ in train["phase"]] == [1, 3]
        [(step, images)] = train["augmented_samples"]
        # An image summary holds width, height, then one PNG per photo.
        assert step == 0 and len(images) == 2 + 6
        assert images[2].startswith(b"\x89PNG")
