"""Two-sample tests: do the recent requests come from the distribution of the reference?

Three tests, each with a permutation p-value (exact in distribution under the null hypothesis,
whatever the dimension or the sample sizes):

- the embeddings: the squared maximum mean discrepancy (MMD, biased estimate) under a Gaussian
  kernel on L2-normalised embeddings, its bandwidth the median pairwise distance of the pooled
  sample (Gretton et al. 2012). It sees any change in the photos that the backbone sees.
- the confidences (top probability): the Kolmogorov-Smirnov distance.
- the predicted-class mix: the total variation distance between the class shares.

The verdict holds drift when the smallest p-value is below ``alpha / 3`` (Bonferroni over the
three tests), so the false-alarm rate stays at most ``alpha`` on photos like the training ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_ALPHA = 0.05
DEFAULT_PERMUTATIONS = 1000
TESTS = ("embeddings", "confidence", "class_mix")


@dataclass(frozen=True)
class TestResult:
    """One test: its statistic and permutation p-value (None: not run, a side had no data)."""

    statistic: float | None
    p_value: float | None


@dataclass(frozen=True)
class Verdict:
    """What the monitor concludes, as its JSON line says it."""

    drift: bool
    p_value: float  # the smallest of the tests' p-values
    alpha: float
    reference_size: int
    sample_size: int
    tests: dict[str, TestResult]

    def to_dict(self) -> dict:
        return asdict(self)


def _normalised(embeddings: np.ndarray) -> np.ndarray:
    embeddings = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.maximum(norms, 1e-12)


def _permutation_p(observed: float, permuted: np.ndarray) -> float:
    """(1 + permutations at least as extreme) / (1 + permutations): never 0, valid at any size."""
    return float((1 + np.sum(permuted >= observed - 1e-12)) / (1 + len(permuted)))


def _permutation_test(
    pooled: np.ndarray,
    n: int,
    statistic: Callable[[np.ndarray, np.ndarray], float],
    permutations: int,
    rng: np.random.Generator,
) -> TestResult:
    """``statistic`` of the first ``n`` pooled values against the rest, and its p-value over
    ``permutations`` random splits of the pool into the same sizes."""
    observed = statistic(pooled[:n], pooled[n:])
    permuted = np.empty(permutations)
    for index in range(permutations):
        order = rng.permutation(len(pooled))
        permuted[index] = statistic(pooled[order[:n]], pooled[order[n:]])
    return TestResult(observed, _permutation_p(observed, permuted))


def _signs(labels: np.ndarray, n: int, m: int) -> np.ndarray:
    """Rows of +1/n for the first sample's members, -1/m for the second's."""
    return np.where(labels, 1.0 / n, -1.0 / m)


def mmd_test(
    reference: np.ndarray, sample: np.ndarray, permutations: int, rng: np.random.Generator
) -> TestResult:
    """MMD² between two sets of embeddings (rows), with its permutation p-value.

    With ``s`` holding 1/n for the reference's rows and -1/m for the sample's, MMD² = sᵀ K s
    over the pooled kernel matrix K, so all permutations cost one matrix product.
    """
    x, y = _normalised(reference), _normalised(sample)
    n, m = len(x), len(y)
    pooled = np.concatenate([x, y])
    squared = np.maximum(
        np.sum(pooled**2, 1)[:, None] + np.sum(pooled**2, 1)[None, :] - 2 * pooled @ pooled.T, 0
    )
    off_diagonal = squared[np.triu_indices(n + m, 1)]
    bandwidth = np.median(off_diagonal[off_diagonal > 0]) if np.any(off_diagonal > 0) else 1.0
    kernel = np.exp(-squared / bandwidth)
    first = np.arange(n + m) < n
    observed = _signs(first, n, m)
    statistic = float(observed @ kernel @ observed)
    shuffled = np.array([rng.permutation(first) for _ in range(permutations)])
    signs = _signs(shuffled, n, m)
    permuted = np.einsum("pi,ij,pj->p", signs, kernel, signs, optimize=True)
    return TestResult(statistic, _permutation_p(statistic, permuted))


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def confidence_test(
    reference: np.ndarray, sample: np.ndarray, permutations: int, rng: np.random.Generator
) -> TestResult:
    """Kolmogorov-Smirnov distance between the top-probability distributions."""
    pooled = np.concatenate([reference, sample]).astype(np.float64)
    return _permutation_test(pooled, len(reference), _ks, permutations, rng)


def class_mix_test(
    reference: np.ndarray,
    sample: np.ndarray,
    num_classes: int,
    permutations: int,
    rng: np.random.Generator,
) -> TestResult:
    """Total variation distance between the predicted-class shares."""
    pooled = np.concatenate([reference, sample]).astype(np.int64)

    def distance(first: np.ndarray, second: np.ndarray) -> float:
        shares = [np.bincount(part, minlength=num_classes) / len(part) for part in (first, second)]
        return float(0.5 * np.abs(shares[0] - shares[1]).sum())

    return _permutation_test(pooled, len(reference), distance, permutations, rng)


def compare(
    reference,  # reference.Reference
    sample,  # sampler.Sample
    alpha: float = DEFAULT_ALPHA,
    permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
) -> Verdict:
    """The three tests of ``sample`` against ``reference``, and the verdict.

    The embedding test compares with the reference's embeddings (training photos); the
    confidence and class-mix tests with its validation predictions, photos the model did not
    fit, as served requests are. A test whose either side is empty is not run.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, not {alpha}")
    if len(sample.confidences) == 0:
        raise ValueError("the sample is empty: no requests (or photos) to compare")
    rng = np.random.default_rng(seed)
    tests = {name: TestResult(None, None) for name in TESTS}
    if len(sample.embeddings) and len(reference.embeddings):
        if sample.embeddings.shape[1] != reference.embeddings.shape[1]:
            raise ValueError(
                f"the sample's embeddings have {sample.embeddings.shape[1]} dimensions and the "
                f"reference's {reference.embeddings.shape[1]}: not the same model"
            )
        tests["embeddings"] = mmd_test(reference.embeddings, sample.embeddings, permutations, rng)
    if len(reference.confidences):
        tests["confidence"] = confidence_test(
            reference.confidences, sample.confidences, permutations, rng
        )
        tests["class_mix"] = class_mix_test(
            reference.classes, sample.classes, len(reference.class_names), permutations, rng
        )
    p_values = [test.p_value for test in tests.values() if test.p_value is not None]
    if not p_values:
        raise ValueError("the reference has neither embeddings nor validation predictions")
    smallest = min(p_values)
    return Verdict(
        drift=smallest < alpha / len(TESTS),
        p_value=smallest,
        alpha=alpha,
        reference_size=len(reference.embeddings),
        sample_size=len(sample.confidences),
        tests=tests,
    )
