"""Cloud Monitoring's ``projects.timeSeries.list`` (REST ``GET /v3/projects/P/timeSeries``) for
Vertex AI's online prediction metrics, from the predictions the emulator served.

Each prediction the endpoints answer is recorded with its deployed model, whether it failed and
its latency. A query must give ``filter`` with exactly one ``metric.type`` and
``interval.endTime`` (``interval.startTime`` at most as late), as the real API requires; it may
narrow by ``resource.type``, ``resource.labels.endpoint_id`` / ``location`` and
``metric.labels.deployed_model_id`` / ``latency_type``. Answers are DELTA points, one per
minute with data, per deployed model: ``prediction_count`` and ``error_count`` (INT64) and
``prediction_latencies`` (DISTRIBUTION, milliseconds, exponential buckets, ``latency_type``
``total``).
"""

from __future__ import annotations

import datetime
import re
import threading
from dataclasses import dataclass

from tests.vertex_emulator.resources import invalid

PREFIX = "aiplatform.googleapis.com/prediction/online/"
METRICS = {
    "prediction_count": "INT64",
    "error_count": "INT64",
    "prediction_latencies": "DISTRIBUTION",
}
RESOURCE_TYPE = "aiplatform.googleapis.com/Endpoint"
# Exponential buckets as Vertex AI's latency distributions use: 1 ms x 2^i.
SCALE_MS, GROWTH, FINITE_BUCKETS = 1.0, 2.0, 20
_CLAUSE = re.compile(r'^\s*(?P<key>[a-z_.]+)\s*=\s*"(?P<value>[^"]*)"\s*$')
_FILTER_KEYS = {
    "metric.type",
    "resource.type",
    "resource.labels.endpoint_id",
    "resource.labels.location",
    "metric.labels.deployed_model_id",
    "metric.labels.latency_type",
}


@dataclass(frozen=True)
class _Served:
    time: datetime.datetime
    project: str
    location: str
    endpoint_id: str
    deployed_model_id: str
    failed: bool
    latency_ms: float


def _timestamp(text: str, name: str) -> datetime.datetime:
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise invalid(f"Field {name} had an invalid value of {text!r}.") from None


def _rfc3339(moment: datetime.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


class PredictionMetrics:
    def __init__(self) -> None:
        self._served: list[_Served] = []
        self._lock = threading.Lock()

    def record(self, endpoint: str, deployed_model_id: str, failed: bool, latency_s: float):
        """One prediction of ``endpoint`` (``projects/N/locations/L/endpoints/E``)."""
        _, project, _, location, _, endpoint_id = endpoint.split("/")
        with self._lock:
            self._served.append(
                _Served(
                    datetime.datetime.now(datetime.timezone.utc),
                    project,
                    location,
                    endpoint_id,
                    deployed_model_id,
                    failed,
                    latency_s * 1000,
                )
            )

    def list_time_series(self, project_number: str, query: dict[str, list[str]]) -> dict:
        """The REST answer to ``GET /v3/projects/<number>/timeSeries?<query>``."""
        clauses = self._filter(query.get("filter", [""])[0])
        if "interval.endTime" not in query:
            raise invalid("Field interval.endTime had an invalid value: it is required.")
        end = _timestamp(query["interval.endTime"][0], "interval.endTime")
        start = _timestamp(
            query.get("interval.startTime", [_rfc3339(end)])[0], "interval.startTime"
        )
        if start > end:
            raise invalid("The start time must be before the end time.")
        metric = clauses["metric.type"][len(PREFIX) :]
        if clauses.get("resource.type", RESOURCE_TYPE) != RESOURCE_TYPE:
            return {}
        if clauses.get("metric.labels.latency_type", "total") != "total":
            return {}
        with self._lock:
            served = [
                s
                for s in self._served
                if s.project == project_number
                and start <= s.time <= end
                and all(
                    getattr(s, key.rsplit(".", 1)[-1]) == value
                    for key, value in clauses.items()
                    if key.startswith("resource.labels.") or key.endswith("deployed_model_id")
                )
            ]
        groups: dict[tuple[str, str, str], dict[datetime.datetime, list[_Served]]] = {}
        for one in served:
            minute = one.time.replace(second=0, microsecond=0)
            key = (one.location, one.endpoint_id, one.deployed_model_id)
            groups.setdefault(key, {}).setdefault(minute, []).append(one)
        series = []
        for (location, endpoint_id, deployed), minutes in sorted(groups.items()):
            labels = {"deployed_model_id": deployed}
            if metric == "prediction_latencies":
                labels["latency_type"] = "total"
            points = [
                {
                    "interval": {
                        "startTime": _rfc3339(minute),
                        "endTime": _rfc3339(minute + datetime.timedelta(minutes=1)),
                    },
                    "value": self._value(metric, minutes[minute]),
                }
                for minute in sorted(minutes, reverse=True)  # newest first, as the API answers
            ]
            series.append(
                {
                    "metric": {"type": PREFIX + metric, "labels": labels},
                    "resource": {
                        "type": RESOURCE_TYPE,
                        "labels": {
                            "resource_container": project_number,
                            "location": location,
                            "endpoint_id": endpoint_id,
                        },
                    },
                    "metricKind": "DELTA",
                    "valueType": METRICS[metric],
                    "points": points,
                }
            )
        return {"timeSeries": series} if series else {}

    @staticmethod
    def _filter(text: str) -> dict[str, str]:
        if not text:
            raise invalid("Field filter had an invalid value: a metric.type is required.")
        clauses = {}
        for clause in text.split(" AND "):
            match = _CLAUSE.match(clause)
            if not match or match["key"] not in _FILTER_KEYS:
                raise invalid(f"Field filter had an invalid value of {text!r}.")
            if match["key"] in clauses:
                raise invalid(f"Field filter names {match['key']} twice: {text!r}.")
            clauses[match["key"]] = match["value"]
        metric = clauses.get("metric.type", "")
        if not metric.startswith(PREFIX) or metric[len(PREFIX) :] not in METRICS:
            raise invalid(f"Cannot find metric(s) that match type = {metric!r}.")
        return clauses

    @staticmethod
    def _value(metric: str, served: list[_Served]) -> dict:
        if metric == "prediction_count":
            return {"int64Value": str(len(served))}
        if metric == "error_count":
            return {"int64Value": str(sum(s.failed for s in served))}
        counts = [0] * (FINITE_BUCKETS + 2)  # underflow, the finite buckets, overflow
        for one in served:
            index = 0
            while index <= FINITE_BUCKETS and one.latency_ms >= SCALE_MS * GROWTH**index:
                index += 1
            counts[index] += 1
        latencies = [s.latency_ms for s in served]
        return {
            "distributionValue": {
                "count": str(len(served)),
                "mean": sum(latencies) / len(latencies),
                "bucketOptions": {
                    "exponentialBuckets": {
                        "numFiniteBuckets": FINITE_BUCKETS,
                        "growthFactor": GROWTH,
                        "scale": SCALE_MS,
                    }
                },
                "bucketCounts": [str(count) for count in counts],
            }
        }
