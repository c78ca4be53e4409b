"""The canary rule: promote a version that serves part of an endpoint's traffic to all of it, or
roll it back, from what it has served so far.

The champion is the deployment with most traffic; the canary, the other one. The rule, in order:

1. **Errors.** The canary's 5xx answers over its requests above ``max_error_rate``: roll back.
   Judged once it has ``min_requests`` requests, or at once when its 5xx count alone already
   puts it above the limit at ``min_requests`` (a canary that fails every request goes fast).
2. **Latency.** Its p95 latency above ``max_latency_p95_ms`` (the serving budget), once it has
   ``min_requests`` requests: roll back.
3. **Accuracy**, where labelled feedback scores both versions on at least ``min_feedback``
   photos: its accuracy more than ``max_accuracy_drop`` below the champion's: roll back.
4. Otherwise, with ``min_requests`` requests: promote; with fewer: wait.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

PROMOTE, ROLLBACK, WAIT = "promote", "rollback", "wait"


@dataclass(frozen=True)
class VersionHealth:
    """What one deployed version has served, and how it did on labelled feedback."""

    deployed_model_id: str
    requests: int
    server_errors: int
    latency_p95_ms: float | None  # None: no request yet
    feedback_total: int = 0
    feedback_correct: int = 0

    @property
    def error_rate(self) -> float:
        return self.server_errors / self.requests if self.requests else 0.0

    @property
    def accuracy(self) -> float | None:
        return self.feedback_correct / self.feedback_total if self.feedback_total else None


@dataclass(frozen=True)
class CanaryRule:
    min_requests: int = 100
    max_error_rate: float = 0.01
    max_latency_p95_ms: float = 500.0
    min_feedback: int = 30
    max_accuracy_drop: float = 0.05

    def __post_init__(self) -> None:
        if self.min_requests < 1 or self.min_feedback < 1:
            raise ValueError("min_requests and min_feedback must be at least 1")
        if not 0 <= self.max_error_rate < 1 or not 0 <= self.max_accuracy_drop < 1:
            raise ValueError("max_error_rate and max_accuracy_drop must be in [0, 1)")
        if self.max_latency_p95_ms <= 0:
            raise ValueError("max_latency_p95_ms must be above 0")


@dataclass(frozen=True)
class CanaryDecision:
    action: str
    champion: VersionHealth
    canary: VersionHealth
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return f"{self.action} {self.canary.deployed_model_id}: {'; '.join(self.reasons)}"


def review(champion: VersionHealth, canary: VersionHealth, rule: CanaryRule) -> CanaryDecision:
    """The rule's decision for ``canary`` against ``champion``, with the reasons in words."""
    enough = canary.requests >= rule.min_requests
    allowed_errors = rule.max_error_rate * max(canary.requests, rule.min_requests)
    if canary.server_errors > allowed_errors and (enough or canary.server_errors > 0):
        return CanaryDecision(
            ROLLBACK,
            champion,
            canary,
            [
                f"{canary.server_errors} server errors in {canary.requests} requests "
                f"({canary.error_rate:.1%}) is over the limit of {rule.max_error_rate:.1%}"
                + ("" if enough else f" even at {rule.min_requests} requests")
            ],
        )
    if not enough:
        return CanaryDecision(
            WAIT,
            champion,
            canary,
            [f"{canary.requests} requests of the {rule.min_requests} needed to judge"],
        )
    reasons = [
        f"{canary.server_errors} server errors in {canary.requests} requests "
        f"({canary.error_rate:.1%}, limit {rule.max_error_rate:.1%})"
    ]
    p95 = canary.latency_p95_ms
    if p95 is not None and (math.isinf(p95) or p95 > rule.max_latency_p95_ms):
        return CanaryDecision(
            ROLLBACK,
            champion,
            canary,
            [f"p95 latency {p95:.0f} ms is over the budget of {rule.max_latency_p95_ms:.0f} ms"],
        )
    reasons.append(f"p95 latency {p95:.0f} ms (budget {rule.max_latency_p95_ms:.0f} ms)")
    if min(champion.feedback_total, canary.feedback_total) >= rule.min_feedback:
        drop = champion.accuracy - canary.accuracy
        accuracy = (
            f"accuracy {canary.accuracy:.3f} on {canary.feedback_total} labelled photos against "
            f"the champion's {champion.accuracy:.3f}"
        )
        if drop > rule.max_accuracy_drop:
            return CanaryDecision(
                ROLLBACK,
                champion,
                canary,
                [f"{accuracy}: a drop over {rule.max_accuracy_drop:.3f}"],
            )
        reasons.append(accuracy)
    elif canary.feedback_total or champion.feedback_total:
        reasons.append(f"accuracy not judged: fewer than {rule.min_feedback} labelled photos")
    return CanaryDecision(PROMOTE, champion, canary, reasons)


def histogram_quantile(quantile: float, buckets: list[tuple[float, float]]) -> float | None:
    """The ``quantile`` of a histogram given as (upper bound, cumulative count) pairs, sorted:
    the upper bound of the bucket where it falls (an over-estimate, never under; ``inf`` when it
    falls past the last finite bound); None when the histogram is empty."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    wanted = quantile * buckets[-1][1]
    for bound, cumulative in buckets:
        if cumulative >= wanted:
            return bound
    return math.inf
