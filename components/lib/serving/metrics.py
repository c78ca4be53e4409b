"""The server's Prometheus metrics, in a registry of their own (one per app, so apps in one
process, as in the tests, do not share counts)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS_S = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServingMetrics:
    """Requests and errors by handler and status, latency, instances per model call, and which
    model versions are loaded."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series: they double the exposition for nothing
        self.registry = CollectorRegistry()
        labels = ("handler", "code")
        self.requests = Counter(
            "image_classifier_serving_requests",
            "HTTP requests answered",
            labels,
            registry=self.registry,
        )
        self.errors = Counter(
            "image_classifier_serving_request_errors",
            "HTTP requests answered with a status of 400 or more",
            labels,
            registry=self.registry,
        )
        self.latency = Histogram(
            "image_classifier_serving_request_latency_seconds",
            "Time from a request's start to its answer",
            ("handler",),
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "image_classifier_serving_batch_size",
            "Instances per model call (dynamic batching joins concurrent requests)",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        # Per deployed version, as Cloud Monitoring's prediction metrics are: what the canary
        # review reads (``monitoring.canary``).
        self.deployed_requests = Counter(
            "image_classifier_serving_deployed_model_requests",
            "Prediction requests that a deployed version answered, by status",
            ("deployed_model_id", "code"),
            registry=self.registry,
        )
        self.deployed_latency = Histogram(
            "image_classifier_serving_deployed_model_latency_seconds",
            "Time from a prediction request's start to its answer, per deployed version",
            ("deployed_model_id",),
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.model_info = Gauge(
            "image_classifier_serving_model_info",
            "1 for each model version loaded and serving",
            ("model_version", "deployed_model_id"),
            registry=self.registry,
        )

    def observe_request(self, handler: str, status: int, seconds: float) -> None:
        self.requests.labels(handler, str(status)).inc()
        if status >= 400:
            self.errors.labels(handler, str(status)).inc()
        self.latency.labels(handler).observe(seconds)

    def observe_prediction(self, deployed_model_id: str, status: int, seconds: float) -> None:
        self.deployed_requests.labels(deployed_model_id, str(status)).inc()
        self.deployed_latency.labels(deployed_model_id).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
