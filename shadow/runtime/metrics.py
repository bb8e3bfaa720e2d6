"""The shadow worker's Prometheus metrics, labelled by candidate (also the engine's
Observer: batch sizes and inference time)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shadow.runtime.engine import ErrorKind

__all__ = ["WorkerMetrics"]


class WorkerMetrics:
    """The worker's Prometheus metrics, labelled by candidate; also the engine's Observer."""

    def __init__(self, candidate: str, registry: CollectorRegistry) -> None:
        self.candidate = candidate
        self.batch_size = Histogram(
            "shadow_worker_batch_size", "Rows per inference batch", ["candidate"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096), registry=registry,
        ).labels(candidate)
        self.inference = Histogram(
            "shadow_worker_inference_seconds", "Inference time per batch", ["candidate"],
            buckets=(1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=registry,
        ).labels(candidate)
        self.batch_latency = Histogram(
            "shadow_worker_batch_seconds", "Time from a batch consumed to its answers handed "
            "to the producer (decode, the model, outputs)", ["candidate"],
            buckets=(1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        ).labels(candidate)
        self.events = Counter("shadow_worker_events", "Requests handled, by outcome",
                              ["candidate", "outcome"], registry=registry)
        self.errors = Counter("shadow_worker_errors", "Errors by kind (rows affected)",
                              ["candidate", "kind"], registry=registry)
        self.rate_value = 0.0
        self.rate = Gauge("shadow_worker_events_per_second",
                          "Requests handled per second over the last commit interval",
                          ["candidate"], registry=registry).labels(candidate)
        self.dead_letters = Counter(
            "shadow_worker_dead_letters", "Dead-letter records written, by stage (every one "
            "of them, including answered requests kept for a look)", ["candidate", "stage"],
            registry=registry)
        self.lag = Gauge("shadow_worker_consumer_lag", "Messages behind the end, by partition",
                         ["candidate", "partition"], registry=registry)

    def batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)

    def error(self, kind: ErrorKind | str, rows: int) -> None:
        self.errors.labels(self.candidate, kind).inc(rows)
