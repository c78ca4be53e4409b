"""``python -m pipeline.canary``: promote an endpoint's canary to all the traffic, or roll it
back, by the rule in ``components.lib.monitoring.canary``, and record why with the endpoint.

What each deployed version served comes from the local server's ``/metrics`` (``--metrics-url``)
or, on Vertex AI, from Cloud Monitoring over the last ``--since-hours``; ``--feedback`` (labelled
photos) adds each version's accuracy. Exit status 0 (promoted, rolled back, waiting, or no
canary), 2 bad input, 1 failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from components.lib.monitoring.canary import CanaryRule
from pipeline.monitor import NO_ENDPOINT, _Parser, add_target_arguments, target_of

DEFAULT_METRICS_URL = "http://127.0.0.1:8080/metrics"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    rule = CanaryRule()
    parser = _Parser(
        prog="python -m pipeline.canary",
        description="Review an endpoint's canary (a version with part of the traffic): roll it "
        "back (all traffic to the champion, the canary undeployed) when its 5xx rate or p95 "
        "latency is over the limit, or its accuracy on labelled feedback drops; promote it "
        "(all traffic, the champion undeployed) once it has served --min-requests within them; "
        "else wait. The decision and its reasons are kept with the endpoint.",
    )
    add_target_arguments(parser)
    parser.add_argument(
        "--metrics-url",
        default=DEFAULT_METRICS_URL,
        help="local target: the prediction server's metrics (%(default)s)",
    )
    parser.add_argument(
        "--since-hours",
        type=float,
        default=24.0,
        help="vertex target: the Cloud Monitoring window (%(default)s h)",
    )
    parser.add_argument(
        "--feedback",
        help="labelled photos: a folder (or gs://) of <class>/<photo>, or a CSV of image,label",
    )
    parser.add_argument("--min-requests", type=int, default=rule.min_requests, help="(%(default)s)")
    parser.add_argument(
        "--max-error-rate", type=float, default=rule.max_error_rate, help="5xx share (%(default)s)"
    )
    parser.add_argument(
        "--max-latency-p95-ms",
        type=float,
        default=rule.max_latency_p95_ms,
        help="the canary's latency budget (%(default)s ms)",
    )
    parser.add_argument("--min-feedback", type=int, default=rule.min_feedback, help="(%(default)s)")
    parser.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=rule.max_accuracy_drop,
        help="below the champion's accuracy by more: roll back (%(default)s)",
    )
    parser.add_argument("--dry-run", action="store_true", help="decide, change nothing")
    parser.add_argument("--json", action="store_true", help="print the decision as JSON, last")
    args = parser.parse_args(argv)
    if not args.endpoint:
        parser.error(NO_ENDPOINT)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from components.lib.targets.canary import CanaryError, review_endpoint
    from components.lib.targets.served import NotServedError

    try:
        rule = CanaryRule(
            args.min_requests,
            args.max_error_rate,
            args.max_latency_p95_ms,
            args.min_feedback,
            args.max_accuracy_drop,
        )
        endpoint, decision = review_endpoint(
            *target_of(args),
            args.endpoint,
            rule,
            args.metrics_url,
            args.since_hours,
            args.feedback or "",
            apply=not args.dry_run,
        )
    except (ValueError, NotServedError, CanaryError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = sys.stderr if args.json else sys.stdout
    if decision is None:
        print(f"no canary on {endpoint}: one version takes all the traffic", file=out)
    else:
        done = " (dry run: nothing changed)" if args.dry_run else ""
        print(f"{decision.summary()}{done}", file=out)
    if args.json:
        print(json.dumps(decision.to_dict() if decision else {"action": "none"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
