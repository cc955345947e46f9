"""`ServingMetrics`: Prometheus metrics, served at TF Serving's `/monitoring/prometheus/metrics`.

Each server has its own registry (several servers can live in one process, as in the tests).
"""

from __future__ import annotations

import prometheus_client as prom

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServingMetrics:
    """Requests by API (rest, grpc), endpoint and status; latency; batch sizes; queue depth; loaded version."""

    content_type = prom.CONTENT_TYPE_LATEST

    def __init__(self, model_name, queue_depth=lambda: 0):
        self.registry = prom.CollectorRegistry(auto_describe=True)
        self.model_name = model_name
        self.requests = prom.Counter(
            "keras_transformer_serving_requests", "Requests answered, by API, endpoint and status (HTTP status or "
            "gRPC code name).", ["api", "endpoint", "status"], registry=self.registry)
        self.latency = prom.Histogram(
            "keras_transformer_serving_request_latency_seconds", "Time from a request's arrival to its answer.",
            ["api", "endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = prom.Histogram(
            "keras_transformer_serving_batch_size", "Instances per model call.", buckets=BATCH_BUCKETS,
            registry=self.registry)
        self.batch_latency = prom.Histogram(
            "keras_transformer_serving_batch_seconds", "Time of one model call.", buckets=LATENCY_BUCKETS,
            registry=self.registry)
        self.queue_depth = prom.Gauge(
            "keras_transformer_serving_queue_depth", "Instances waiting for a batch.", registry=self.registry)
        self.queue_depth.set_function(queue_depth)
        self.version = prom.Gauge(
            "keras_transformer_serving_model_version", "The model version being served.", ["model"],
            registry=self.registry)

    def observe_request(self, api, endpoint, status, seconds):
        self.requests.labels(api, endpoint, str(status)).inc()
        self.latency.labels(api, endpoint).observe(seconds)

    def observe_batch(self, size, seconds):
        self.batch_size.observe(size)
        self.batch_latency.observe(seconds)

    def set_version(self, model):
        self.version.labels(self.model_name).set(model.version)

    def exposition(self) -> bytes:
        return prom.generate_latest(self.registry)


__all__ = ["ServingMetrics"]
