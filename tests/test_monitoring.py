"""The drift tests, the request sampler and the canary rule, on numbers made here (no model)."""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import pytest

from components.lib.monitoring.canary import (
    PROMOTE,
    ROLLBACK,
    WAIT,
    CanaryRule,
    VersionHealth,
    histogram_quantile,
    review,
)
from components.lib.monitoring.drift import compare, mmd_test
from components.lib.monitoring.reference import (
    Reference,
    load_reference,
    sample_indices,
    write_reference,
)
from components.lib.monitoring.sampler import (
    RequestSampler,
    Sample,
    SamplingSettings,
    read_recent,
)

DIMENSIONS = 64


def _reference(rng: np.random.Generator, size: int = 150) -> Reference:
    return Reference(
        class_names=["a", "b", "c"],
        embeddings=rng.normal(size=(size, DIMENSIONS)).astype(np.float32),
        labels=rng.integers(0, 3, size),
        confidences=rng.beta(8, 2, 90).astype(np.float32),
        classes=rng.integers(0, 3, 90),
    )


def _sample(rng: np.random.Generator, size: int = 40, shift: float = 0.0) -> Sample:
    embeddings = rng.normal(size=(size, DIMENSIONS)) + shift
    return Sample(embeddings.astype(np.float32), rng.beta(8, 2, size), rng.integers(0, 3, size))


def test_like_samples_rarely_drift_and_shifted_ones_always_do() -> None:
    """Under the null hypothesis the verdict's false-alarm rate is at most alpha (5%); a shift
    of the embeddings' mean by a third of their spread is found at p < 0.01 every time."""
    rng = np.random.default_rng(0)
    reference = _reference(rng)
    alarms = [compare(reference, _sample(rng), permutations=200, seed=i).drift for i in range(40)]
    assert sum(alarms) <= 4  # 5% of 40 is 2; binomial slack
    for seed in range(5):
        verdict = compare(reference, _sample(rng, shift=0.35), permutations=200, seed=seed)
        assert verdict.drift
        assert verdict.tests["embeddings"].p_value < 0.01
        assert verdict.p_value == verdict.tests["embeddings"].p_value
        assert (verdict.reference_size, verdict.sample_size) == (150, 40)


def test_a_change_of_confidence_or_class_mix_alone_is_drift() -> None:
    rng = np.random.default_rng(1)
    reference = _reference(rng)
    unsure = _sample(rng, 60)
    unsure = Sample(unsure.embeddings, rng.uniform(0.3, 0.6, 60), unsure.classes)
    verdict = compare(reference, unsure, permutations=300)
    assert verdict.drift and verdict.tests["confidence"].p_value < 0.01
    one_class = _sample(rng, 60)
    one_class = Sample(one_class.embeddings, one_class.confidences, np.zeros(60, np.int32))
    verdict = compare(reference, one_class, permutations=300)
    assert verdict.drift and verdict.tests["class_mix"].p_value < 0.01


def test_the_permutation_p_value_is_never_zero_and_the_statistic_is_mmd() -> None:
    rng = np.random.default_rng(2)
    same = rng.normal(size=(30, 8))
    result = mmd_test(same, same + 10, 99, rng)
    assert result.p_value == pytest.approx(1 / 100)
    assert result.statistic > 0.5  # two far-apart clusters: the kernel mean embeddings differ
    assert mmd_test(same, same, 99, rng).statistic == pytest.approx(0.0, abs=1e-12)


def test_compare_refuses_what_it_cannot_test() -> None:
    rng = np.random.default_rng(3)
    reference = _reference(rng)
    with pytest.raises(ValueError, match="empty"):
        compare(reference, Sample(np.zeros((0, 0)), np.zeros(0), np.zeros(0)))
    with pytest.raises(ValueError, match="not the same model"):
        compare(reference, Sample(np.zeros((5, 3)), np.ones(5), np.zeros(5, np.int32)))
    with pytest.raises(ValueError, match="alpha"):
        compare(reference, _sample(rng), alpha=1.5)


def test_a_sample_without_embeddings_is_judged_on_its_predictions() -> None:
    rng = np.random.default_rng(4)
    predictions = _sample(rng)
    verdict = compare(
        _reference(rng), Sample(np.zeros((0, 0)), predictions.confidences, predictions.classes)
    )
    assert verdict.tests["embeddings"].p_value is None
    assert verdict.tests["confidence"].p_value is not None


def test_the_reference_round_trips_and_samples_every_class(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    labels = np.repeat([0, 1, 2], [300, 60, 6])
    picked = sample_indices(labels, 100, seed=0)
    assert len(picked) == 100 and set(labels[picked]) == {0, 1, 2}
    assert np.array_equal(picked, sample_indices(labels, 100, seed=0))
    reference = _reference(rng)
    uri = write_reference(str(tmp_path / "model"), reference)
    assert uri.endswith("model/monitoring/reference.npz")
    loaded = load_reference(str(tmp_path / "model"))
    assert loaded.class_names == ["a", "b", "c"]
    np.testing.assert_allclose(loaded.embeddings, reference.embeddings, atol=1e-2)  # float16
    assert [row["count"] for row in loaded.class_statistics()] == [
        int(np.sum(reference.labels == index)) for index in range(3)
    ]
    with pytest.raises(FileNotFoundError, match="without a monitoring reference"):
        load_reference(str(tmp_path / "other"))


def _probabilities(rng: np.random.Generator, rows: int) -> np.ndarray:
    return rng.dirichlet(np.ones(3), rows).astype(np.float32)


def test_the_sampler_stays_bounded_whatever_the_traffic(tmp_path: Path) -> None:
    """10 000 predictions keep 50 rows; windows beyond keep_windows are deleted; no image is
    stored unless asked."""
    rng = np.random.default_rng(6)
    settings = SamplingSettings(str(tmp_path / "samples"), capacity=50, keep_windows=2)
    sampler = RequestSampler(settings)
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    for window in range(3):
        for _ in range(100):
            sampler.observe(rng.normal(size=(100, 8)), _probabilities(rng, 100), [b"x"] * 100)
        assert sampler.seen == 10_000
        sampler.flush(start + datetime.timedelta(minutes=window))
    files = sorted(path.name for path in (tmp_path / "samples").iterdir())
    assert files == ["20260101T000100.000000Z.npz", "20260101T000200.000000Z.npz"]
    assert sampler.flush() is None  # nothing seen since
    sample, windows = read_recent(str(tmp_path / "samples"), 80)
    assert windows == 2 and len(sample.confidences) == 80
    assert sample.embeddings.shape == (80, 8)


def test_the_reservoir_is_uniform_over_the_window() -> None:
    """Every prediction of a window has the same chance to be kept: the mean index kept is
    the window's middle, not its start or end."""
    sampler = RequestSampler(SamplingSettings("unused", capacity=200, seed=1))
    for start in range(0, 20_000, 50):
        indices = np.arange(start, start + 50, dtype=np.float32)
        sampler.observe(indices[:, None], np.tile([[0.9, 0.1]], (50, 1)), [b""] * 50)
    kept = np.array([row[0][0] for row in sampler._rows], dtype=np.float64)
    assert abs(kept.mean() - 10_000) < 1_500


def test_request_images_are_stored_only_when_asked(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    images = [b"\x89PNG...", b"\xff\xd8jpeg"]
    sampler = RequestSampler(SamplingSettings(str(tmp_path), capacity=4, store_images=True))
    sampler.observe(None, _probabilities(rng, 2), images)
    written = sampler.flush()
    folder = Path(written[: -len(".npz")] + "-images")
    assert sorted(path.read_bytes() for path in folder.iterdir()) == sorted(images)
    sample, _ = read_recent(str(tmp_path), 10)
    assert sample.embeddings.shape == (0, 0) and len(sample.confidences) == 2


def _health(name: str, requests: int, errors: int = 0, p95: float | None = 40.0, **feedback):
    return VersionHealth(name, requests, errors, p95, **feedback)


RULE = CanaryRule(min_requests=50, max_error_rate=0.02, max_latency_p95_ms=200, min_feedback=20)


def test_the_canary_rule() -> None:
    champion = _health("champion", 900)
    assert review(champion, _health("canary", 100), RULE).action == PROMOTE
    assert review(champion, _health("canary", 10), RULE).action == WAIT
    failing = review(champion, _health("canary", 4, errors=4), RULE)
    assert failing.action == ROLLBACK  # 4 errors exceed 2% of 50 already
    assert "even at 50 requests" in failing.reasons[0]
    assert review(champion, _health("canary", 100, errors=2), RULE).action == PROMOTE
    assert review(champion, _health("canary", 100, errors=3), RULE).action == ROLLBACK
    slow = review(champion, _health("canary", 100, p95=500.0), RULE)
    assert slow.action == ROLLBACK and "over the budget of 200 ms" in slow.reasons[0]
    assert review(champion, _health("canary", 100, p95=float("inf")), RULE).action == ROLLBACK


def test_feedback_rolls_back_a_less_accurate_canary() -> None:
    champion = _health("champion", 900, feedback_total=40, feedback_correct=36)
    worse = _health("canary", 100, feedback_total=40, feedback_correct=30)
    assert review(champion, worse, RULE).action == ROLLBACK
    as_good = _health("canary", 100, feedback_total=40, feedback_correct=35)
    decision = review(champion, as_good, RULE)
    assert decision.action == PROMOTE and "accuracy 0.875 on 40" in decision.summary()
    too_few = _health("canary", 100, feedback_total=5, feedback_correct=0)
    assert "not judged" in review(champion, too_few, RULE).reasons[-1]


def test_histogram_quantile_is_the_bucket_bound() -> None:
    buckets = [(0.01, 50.0), (0.05, 94.0), (0.1, 99.0), (float("inf"), 100.0)]
    assert histogram_quantile(0.5, buckets) == 0.01
    assert histogram_quantile(0.95, buckets) == 0.1
    assert histogram_quantile(0.999, buckets) == float("inf")
    assert histogram_quantile(0.95, [(0.1, 0.0), (float("inf"), 0.0)]) is None
