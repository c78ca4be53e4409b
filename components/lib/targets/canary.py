"""Canary review on an endpoint: read what each deployed version has served, score them on
labelled feedback where there is some, apply the rule (``monitoring.canary``), and promote or
roll back, recording why with the endpoint.

What each version served comes from the local server's ``/metrics`` (its per-deployed-model
counters) or from Cloud Monitoring's per-deployed-model prediction metrics on Vertex AI
(``ListTimeSeries``: ``prediction_count``, ``error_count``, ``prediction_latencies``).
"""

from __future__ import annotations

import csv
import datetime
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from components.lib.monitoring.canary import (
    PROMOTE,
    ROLLBACK,
    CanaryDecision,
    CanaryRule,
    VersionHealth,
    histogram_quantile,
    review,
)
from components.lib.storage import filesystem
from components.lib.targets.base import Deployment, ModelVersion, most_traffic

MONITORING_API_ENV = "IMAGE_CLASSIFIER_MONITORING_API"
"""Cloud Monitoring's base URL (default https://monitoring.googleapis.com; the emulator's in
tests)."""
PREDICTION_METRICS = "aiplatform.googleapis.com/prediction/online/"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


class CanaryError(ValueError):
    """The review cannot be made: no such endpoint, unreadable metrics or feedback."""


@dataclass(frozen=True)
class Served:
    """What one deployed version answered: requests, 5xx answers, p95 latency in ms."""

    requests: int
    server_errors: int
    latency_p95_ms: float | None


class CanaryEndpoints(Protocol):
    """The endpoint side of a review (``local.EndpointRegistry``, ``vertex.VertexEndpoints``)."""

    def deployments(self, display_name: str) -> tuple[list[Deployment], dict[str, int], str]: ...

    def set_traffic(
        self, display_name: str, split: dict[str, int], retire: Sequence[str], review: dict
    ) -> dict[str, Any]: ...


def served_from_prometheus(text: str) -> dict[str, Served]:
    """Per deployed model, from the local server's ``/metrics`` exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    requests: dict[str, int] = {}
    errors: dict[str, int] = {}
    buckets: dict[str, list[tuple[float, float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            deployed = sample.labels.get("deployed_model_id")
            if deployed is None:
                continue
            if sample.name == "image_classifier_serving_deployed_model_requests_total":
                requests[deployed] = requests.get(deployed, 0) + int(sample.value)
                if sample.labels["code"].startswith("5"):
                    errors[deployed] = errors.get(deployed, 0) + int(sample.value)
            elif sample.name == "image_classifier_serving_deployed_model_latency_seconds_bucket":
                bound = float(sample.labels["le"])
                buckets.setdefault(deployed, []).append((bound * 1000, sample.value))
    return {
        deployed: Served(
            count,
            errors.get(deployed, 0),
            histogram_quantile(0.95, sorted(buckets.get(deployed, []))),
        )
        for deployed, count in requests.items()
    }


def read_metrics_url(url: str) -> dict[str, Served]:
    import requests

    try:
        reply = requests.get(url, timeout=30)
    except requests.RequestException as error:
        raise CanaryError(f"cannot read the server's metrics at {url}: {error}") from None
    if not reply.ok:
        raise CanaryError(f"{url} answered HTTP {reply.status_code}")
    return served_from_prometheus(reply.text)


def _distribution_buckets(value: dict) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of a Cloud Monitoring Distribution value."""
    counts = [int(count) for count in value.get("bucketCounts", [])]
    options = value.get("bucketOptions", {})
    if "explicitBuckets" in options:
        bounds = [float(bound) for bound in options["explicitBuckets"]["bounds"]]
    elif "exponentialBuckets" in options:
        spec = options["exponentialBuckets"]
        bounds = [
            float(spec["scale"]) * float(spec["growthFactor"]) ** index
            for index in range(int(spec["numFiniteBuckets"]) + 1)
        ]
    elif "linearBuckets" in options:
        spec = options["linearBuckets"]
        bounds = [
            float(spec["offset"]) + float(spec["width"]) * index
            for index in range(int(spec["numFiniteBuckets"]) + 1)
        ]
    else:
        return []
    # bucket 0 is the underflow (< bounds[0]); bucket i covers [bounds[i-1], bounds[i]).
    upper = [*bounds, math.inf]
    cumulative, total = [], 0
    for index, count in enumerate(counts):
        total += count
        cumulative.append((upper[min(index, len(upper) - 1)], float(total)))
    return cumulative


def read_cloud_monitoring(
    project: str, endpoint_name: str, since: datetime.datetime, until: datetime.datetime
) -> dict[str, Served]:
    """Per deployed model of ``endpoint_name``, from Cloud Monitoring over [since, until]."""
    from google.auth.transport.requests import AuthorizedSession
    from google.cloud.aiplatform import initializer

    from components.lib.targets.vertex import use_emulator_if_set

    use_emulator_if_set()
    session = AuthorizedSession(initializer.global_config.credentials)
    base = os.environ.get(MONITORING_API_ENV, "https://monitoring.googleapis.com").rstrip("/")
    endpoint_id = endpoint_name.rsplit("/", 1)[-1]
    interval = {
        "interval.startTime": since.isoformat().replace("+00:00", "Z"),
        "interval.endTime": until.isoformat().replace("+00:00", "Z"),
    }

    def series(metric: str, extra: str = "") -> list[dict]:
        query = (
            f'metric.type="{PREDICTION_METRICS}{metric}" AND '
            f'resource.type="aiplatform.googleapis.com/Endpoint" AND '
            f'resource.labels.endpoint_id="{endpoint_id}"{extra}'
        )
        found, token = [], ""
        while True:
            params = {"filter": query, **interval, **({"pageToken": token} if token else {})}
            url = f"{base}/v3/projects/{project}/timeSeries"
            try:
                reply = session.get(url, params=params, timeout=60)
            except Exception as error:  # requests' and google-auth's errors alike
                raise CanaryError(f"cannot read Cloud Monitoring: {error}") from None
            if not reply.ok:
                raise CanaryError(f"Cloud Monitoring answered {reply.status_code}: {reply.text}")
            body = reply.json()
            found += body.get("timeSeries", [])
            token = body.get("nextPageToken", "")
            if not token:
                return found

    def totals(metric: str) -> dict[str, int]:
        counted: dict[str, int] = {}
        for one in series(metric):
            deployed = one["metric"].get("labels", {}).get("deployed_model_id", "")
            points = sum(int(point["value"].get("int64Value", 0)) for point in one["points"])
            counted[deployed] = counted.get(deployed, 0) + points
        return counted

    requests, errors = totals("prediction_count"), totals("error_count")
    latencies: dict[str, list[tuple[float, float]]] = {}
    for one in series("prediction_latencies", ' AND metric.labels.latency_type="total"'):
        deployed = one["metric"].get("labels", {}).get("deployed_model_id", "")
        merged: dict[float, float] = {}
        for point in one["points"]:
            previous = 0.0
            for bound, cumulative in _distribution_buckets(point["value"]["distributionValue"]):
                merged[bound] = merged.get(bound, 0.0) + cumulative - previous
                previous = cumulative
        running, cumulative_buckets = 0.0, []
        for bound in sorted(merged):
            running += merged[bound]
            cumulative_buckets.append((bound, running))
        latencies[deployed] = cumulative_buckets
    return {
        deployed: Served(
            count, errors.get(deployed, 0), histogram_quantile(0.95, latencies.get(deployed, []))
        )
        for deployed, count in requests.items()
    }


def read_feedback(uri: str) -> list[tuple[bytes, str]]:
    """Labelled photos: a folder (or ``gs://`` prefix) of ``<class>/<photo>``, or a CSV of
    ``image,label`` rows (image paths relative to the CSV's folder, or absolute, or gs://)."""
    fs, path = filesystem(uri)
    if not fs.exists(path):
        raise CanaryError(f"feedback {uri} does not exist")
    if path.endswith(".csv"):
        with fs.open(path, "r") as file:
            rows = list(csv.DictReader(io.StringIO(file.read())))
        if rows and not {"image", "label"} <= set(rows[0]):
            raise CanaryError(f"{uri}: the CSV needs the columns image and label")
        folder = uri.rsplit("/", 1)[0]
        labelled = []
        for row in rows:
            image = row["image"]
            if "://" not in image and not os.path.isabs(image):
                image = f"{folder}/{image}"
            image_fs, image_path = filesystem(image)
            labelled.append((image_fs.cat_file(image_path), row["label"]))
        return labelled
    labelled = []
    for found in sorted(fs.find(path)):
        relative = found[len(path.rstrip("/")) + 1 :]
        if "/" in relative and relative.lower().endswith(IMAGE_SUFFIXES):
            labelled.append((fs.cat_file(found), relative.split("/")[0]))
    return labelled


def feedback_score(artifact_uri: str, feedback: list[tuple[bytes, str]]) -> tuple[int, int]:
    """(photos scored, photos right) of the version at ``artifact_uri``; labels it does not
    know count as wrong."""
    from components.lib.serving.prediction import ServingModel

    model = ServingModel(artifact_uri)
    right = 0
    for start in range(0, len(feedback), 32):
        part = feedback[start : start + 32]
        classes = model.predict([image for image, _ in part]).classes
        right += sum(
            model.class_names[int(index)] == label
            for index, (_, label) in zip(classes, part, strict=True)
        )
    return len(feedback), right


def review_canary(
    endpoints: CanaryEndpoints,
    display_name: str,
    served: dict[str, Served],
    rule: CanaryRule,
    versions: dict[str, ModelVersion] | None = None,
    feedback: list[tuple[bytes, str]] | None = None,
    apply: bool = True,
) -> CanaryDecision | None:
    """The decision for the endpoint's canary (None: no canary, one version takes all the
    traffic), applied unless ``apply`` is False: promote gives it 100% and undeploys the
    champion; roll back gives the champion 100% and undeploys the canary. ``versions`` (by
    deployed model id) are needed to score ``feedback``."""
    deployments, split, _ = endpoints.deployments(display_name)
    champion = most_traffic(deployments, split)
    canaries = [d for d in deployments if d is not champion and split.get(d.id, 0) > 0]
    if champion is None or not canaries:
        return None
    canary = canaries[0]

    def health(deployment: Deployment) -> VersionHealth:
        seen = served.get(deployment.id, Served(0, 0, None))
        total = right = 0
        if feedback and versions:
            total, right = feedback_score(versions[deployment.id].artifact_uri, feedback)
        return VersionHealth(
            deployment.id, seen.requests, seen.server_errors, seen.latency_p95_ms, total, right
        )

    decision = review(health(champion), health(canary), rule)
    if apply and decision.action in (PROMOTE, ROLLBACK):
        keep = canary if decision.action == PROMOTE else champion
        retire = [d.id for d in deployments if d is not keep]
        record = {
            "action": decision.action,
            "canary": canary.id,
            "champion": champion.id,
            "summary": decision.summary(),
            "decision": decision.to_dict(),
        }
        endpoints.set_traffic(display_name, {keep.id: 100}, retire, record)
    return decision


def review_endpoint(
    target: str,
    local_state_dir: str,
    project: str,
    location: str,
    display_name: str,
    rule: CanaryRule,
    metrics_url: str = "",
    since_hours: float = 24.0,
    feedback_uri: str = "",
    apply: bool = True,
) -> tuple[str, CanaryDecision | None]:
    """``review_canary`` for the endpoint ``display_name`` of ``target``: what its versions
    served from the local server's ``metrics_url`` or from Cloud Monitoring over the last
    ``since_hours``, and their accuracy on ``feedback_uri`` where given. Returns the
    endpoint's resource name and the decision."""
    from components.lib.targets.base import LOCAL
    from components.lib.targets.served import served_endpoint

    endpoint = served_endpoint(target, local_state_dir, project, location, display_name)
    if target == LOCAL:
        served = read_metrics_url(metrics_url)
    else:
        until = datetime.datetime.now(datetime.timezone.utc)
        since = until - datetime.timedelta(hours=since_hours)
        served = read_cloud_monitoring(project, endpoint.name, since, until)
    feedback = read_feedback(feedback_uri) if feedback_uri else None
    versions = {s.deployment.id: s.version for s in endpoint.versions}
    decision = review_canary(
        endpoint.endpoints, display_name, served, rule, versions, feedback, apply
    )
    return endpoint.name, decision
