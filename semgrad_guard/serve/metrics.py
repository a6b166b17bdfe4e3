"""Prometheus metrics of one app, in its own ``CollectorRegistry`` (two apps in one process never clash)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

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

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, method=method, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def observe_pass(self, kind: str, size: int) -> None:
        self.batch_size.labels(kind=kind).observe(size)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
