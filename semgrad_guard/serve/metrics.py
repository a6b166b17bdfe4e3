"""Prometheus metrics of one app, in its own ``CollectorRegistry`` (two apps in one process never clash)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

if TYPE_CHECKING:
    from ..guard.calibration import Calibrator

FIX = (
    "fix: semgrad-guard calibrate --from-reviews REVIEW_DB --out calibrator.json, then "
    "POST /admin/calibrator or kill -HUP the service"
)
"""What the drift metrics' help says to do (the drift warning in the log names the queue and its labels)."""

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServiceMetrics:
    """Requests, latency, batch sizes, queue depth, errors by type and decisions by action.

    Example:
        >>> m = ServiceMetrics()
        >>> m.observe_request("/v1/score", "POST", 200, 0.01)
        >>> b"semgrad_requests_total" in m.render()[0]
        True
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "semgrad_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "semgrad_request_latency_seconds",
            "Request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "semgrad_batch_size",
            "Pairs per pass of the worker, by kind",
            ["kind"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("semgrad_queue_depth", "Requests waiting for the model", registry=r)
        self.errors = Counter("semgrad_errors", "Error answers by error type", ["type"], registry=r)
        self.decisions = Counter("semgrad_decisions", "Policy verdicts by action", ["action"], registry=r)
        self.drift_statistic = Gauge(
            "semgrad_calibrator_drift_statistic",
            "Kolmogorov-Smirnov statistic of the last confidences against the calibrator's fitting data "
            f"(NaN: no calibrator or no reference); drifted when the p-value is below 0.001; {FIX}",
            registry=r,
        )
        self.drift_p_value = Gauge(
            "semgrad_calibrator_drift_p_value",
            "p-value of the drift statistic (1 until 50 confidences are seen); below 0.001 the "
            f"confidence is likely off on this traffic; {FIX}",
            registry=r,
        )
        self.review_labels = Gauge(
            "semgrad_review_labels",
            "Decided review items (approved, rejected, edited): the labels calibrate --from-reviews "
            "fits on (NaN: the service has no review queue)",
            registry=r,
        )
        self.drift_statistic.set_function(lambda: math.nan)
        self.drift_p_value.set_function(lambda: math.nan)
        self.review_labels.set_function(lambda: math.nan)

    def watch_calibration(
        self, calibrator: Callable[[], Calibrator | None], labels: Callable[[], int | None] | None = None
    ) -> None:
        """Read the drift gauges from ``calibrator()`` (the one serving now) and the label gauge from
        ``labels()`` at every scrape."""

        def drift(attr: str) -> Callable[[], float]:
            def read() -> float:
                cal = calibrator()
                monitor = cal.drift if cal is not None else None
                return math.nan if monitor is None else float(getattr(monitor, attr))

            return read

        self.drift_statistic.set_function(drift("statistic"))
        self.drift_p_value.set_function(drift("p_value"))
        if labels is not None:

            def count() -> float:
                n = labels()
                return math.nan if n is None else float(n)

            self.review_labels.set_function(count)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, method=method, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def observe_pass(self, kind: str, size: int) -> None:
        self.batch_size.labels(kind=kind).observe(size)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
