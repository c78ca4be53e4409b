"""Shared fixtures: small datasets made on the fly, the real beer photos, a trained demo model."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m pipeline.run ARGS`` from the project root, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.run", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )


def write_image(path: Path, color: tuple[int, int, int], size: int = 48, fmt: str = "JPEG") -> None:
    """A small photo-like image: a solid colour with noise, so classes are separable."""
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    pixels = np.clip(np.array(color) + rng.normal(0, 12, (size, size, 3)), 0, 255).astype("uint8")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)


def make_layout(root: Path, per_class: dict[str, int] | None = None) -> Path:
    """``root/{train,eval}/<class>/NNN.jpg`` with two classes by default."""
    colors = {"0red": (200, 40, 40), "1blue": (40, 40, 200), "2green": (40, 200, 40)}
    per_class = per_class or {"0red": 4, "1blue": 4}
    for split in ("train", "eval"):
        for name, count in per_class.items():
            for index in range(count):
                write_image(root / split / name / f"{index:03d}.jpg", colors[name])
    return root


def jpeg_bytes(color: tuple[int, int, int], size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def layout_dir(tmp_path: Path) -> Path:
    return make_layout(tmp_path / "data")


@pytest.fixture(scope="session")
def beer_data_dir() -> Path:
    """The real beer photos (``BEER_DATA_DIR``, set by .ci/run from ../shared/data/beers)."""
    path = os.environ.get("BEER_DATA_DIR")
    if not path or not Path(path, "train").is_dir():
        pytest.skip("BEER_DATA_DIR is not set to the beer photos (.ci/run sets it)")
    return Path(path)


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from components.lib.demo_data import make_demo_dataset

    return Path(make_demo_dataset(str(tmp_path_factory.mktemp("demo") / "data")))


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory: pytest.TempPathFactory, demo_data_dir: Path) -> Path:
    """A classifier trained briefly on the demo dataset and exported as a serving SavedModel."""
    from components.lib.model import TrainingConfig, export_serving_model, train_classifier
    from components.lib.records import preprocess_dataset

    work = tmp_path_factory.mktemp("demo-model")
    dataset = preprocess_dataset(str(demo_data_dir), str(work / "records"), image_size=96)
    model, _ = train_classifier(dataset, TrainingConfig(epochs=3, fine_tune_epochs=0))
    export_serving_model(model, dataset.class_names, dataset.image_size, str(work / "model"))
    shutil.rmtree(work / "records")
    return work / "model"


@pytest.fixture(scope="session")
def weak_model_dir(tmp_path_factory: pytest.TempPathFactory, demo_data_dir: Path) -> Path:
    """A model trained for one epoch at a learning rate too small to learn: a weak challenger."""
    from components.lib.model import TrainingConfig, export_serving_model, train_classifier
    from components.lib.records import preprocess_dataset

    work = tmp_path_factory.mktemp("weak-model")
    dataset = preprocess_dataset(str(demo_data_dir), str(work / "records"), image_size=96)
    model, _ = train_classifier(
        dataset, TrainingConfig(epochs=1, learning_rate=1e-7, fine_tune_epochs=0)
    )
    export_serving_model(model, dataset.class_names, dataset.image_size, str(work / "model"))
    shutil.rmtree(work / "records")
    return work / "model"
