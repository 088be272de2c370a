"""Prometheus metrics of one service instance (its own registry, so several apps can live in one
process, as they do in the tests)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("feedbackgen_http_requests", "HTTP requests answered",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("feedbackgen_http_request_seconds", "time to answer an HTTP request",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("feedbackgen_http_errors", "HTTP requests answered with status >= 400",
                              ["route", "status"], registry=r)
        self.batch_size = Histogram("feedbackgen_batch_size", "requests per model batch", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("feedbackgen_batch_seconds", "time the model took per batch", ["model"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("feedbackgen_queue_depth", "requests waiting for a batch", ["model"], registry=r)
        self.generated = Counter("feedbackgen_generated_feedback", "feedback answers generated", ["model"],
                                 registry=r)
        self.generation_errors = Counter("feedbackgen_generation_errors", "requests whose batch failed",
                                         ["model"], registry=r)
        self.rejected = Counter("feedbackgen_rejected_requests", "requests refused because the queue was full",
                                ["model"], registry=r)
        self.ready = Gauge("feedbackgen_ready", "1 once every model is loaded", registry=r)

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if status >= 400:
            self.errors.labels(route, str(status)).inc()

    def observe_batch(self, model: str, size: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(size)
        self.batch_seconds.labels(model).observe(seconds)
        self.generated.labels(model).inc(size)

    def render(self) -> bytes:
        return generate_latest(self.registry)
