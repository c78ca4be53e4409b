"""bench.scale's own logic on tiny inputs: distinct images in proportion, costs beyond start-up,
and the flatness targets."""

from __future__ import annotations

import hashlib
from pathlib import Path

from bench import scale
from bench.common import MIB
from bench.pipeline_steps import RunResult
from tests.conftest import make_layout


def test_images_are_distinct_and_keep_each_photo_split_and_class(tmp_path: Path) -> None:
    photos = make_layout(tmp_path / "photos", {"0red": 3, "1blue": 2})  # 10 photos
    made = scale.make_images(photos, tmp_path / "made", 25)

    files = sorted(made.rglob("*.jpg"))
    assert len(files) == 25
    assert len({hashlib.sha256(path.read_bytes()).hexdigest() for path in files}) == 25
    counts = {
        f"{split}/{name}": len(list((made / split / name).glob("*.jpg")))
        for split in ("train", "eval")
        for name in ("0red", "1blue")
    }
    # 2.5 of each photo: every split and class in proportion (3:2 per split), to half an image.
    shares = {"train/0red": 0.3, "train/1blue": 0.2, "eval/0red": 0.3, "eval/1blue": 0.2}
    assert all(abs(counts[group] - 25 * share) <= 0.5 for group, share in shares.items())
    original = photos / "train/0red/000.jpg"
    assert (made / "train/0red/000-0000.jpg").read_bytes() == original.read_bytes()
    assert scale.variant(original, 1) != scale.variant(original, 2)
    assert scale.variant(original, 1) == scale.variant(original, 1)


def _result(
    images: int, seconds: dict[str, float], peaks_mib: dict[str, float]
) -> scale.SizeResult:
    peaks = {step: int(mib * MIB) for step, mib in peaks_mib.items()}
    return scale.SizeResult(images, RunResult(str(images), 1.0, seconds, peaks, 0))


def test_costs_beyond_start_up_and_flatness_targets() -> None:
    base = _result(100, {"preprocess-data": 10.0, "train-model": 20.0}, {})
    small = _result(
        1100,
        {"preprocess-data": 20.0, "train-model": 30.0, "upload-model": 0.1},
        {"preprocess-data": 600, "train-model": 1000},
    )
    large = _result(
        10100,
        {"preprocess-data": 110.0, "train-model": 180.0, "upload-model": 0.1},
        {"preprocess-data": 660, "train-model": 1200},
    )

    assert scale.cost_per_1000(small, base, "preprocess-data") == 10.0
    assert scale.cost_per_1000(large, base, "train-model") == 16.0
    table, figures, targets = scale.evaluate(base, [small, large])

    verdicts = {target.name.split()[0] + " " + target.name.split()[1]: target for target in targets}
    assert verdicts["preprocess-data peak"].met  # 660 / 600 = 1.10
    assert not verdicts["train-model peak"].met  # 1200 / 1000 = 1.20
    assert verdicts["preprocess-data cost"].measured == 1.0 and verdicts["preprocess-data cost"].met
    assert not verdicts["train-model cost"].met  # 16 vs 10 s per 1,000: 60% more
    assert not any(target.name.startswith("upload") for target in targets)
    assert "16.00" in table and "whole run (wall)" in table
    assert figures["steps"]["train-model"]["10100"]["cost_per_1000"] == 16.0
