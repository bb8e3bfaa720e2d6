"""The mirror's counters, exposed in the caller's Prometheus registry.

publish() takes a few microseconds, so its counts are plain integers under one lock, and the
metrics are rendered from them at scrape time by a collector (prometheus-client's own
counters and histograms lock per update and would double the cost of a call). Delivery is
reported per record (a batch of events): ``published`` counts the events the broker has
acknowledged, ``delivery_failed`` those librdkafka gave up on.

An event's path: publish() accepts it into the hand-off buffer (attempted), the shipper
handles it (enqueued into librdkafka, or dropped for serialization/size), librdkafka
delivers it (published) or gives up (delivery_failed). Events still in the buffer at close()
count as delivery_failed too.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# publish() takes microseconds: buckets from 5 µs to 10 ms.
PUBLISH_BUCKETS = (5e-6, 10e-6, 20e-6, 50e-6, 100e-6, 250e-6, 1e-3, 10e-3)
DROP_REASONS = ("invalid", "invalid_output", "closed", "paused", "serialization", "too_large",
                "queue_full", "produce_error", "internal")


@dataclass(frozen=True)
class MirrorCounts:
    attempted: int
    published: int
    dropped: dict[str, int]
    delivery_failed: int
    sampled_out: int
    in_flight: int

    @property
    def settled(self) -> bool:
        """Every attempted event has ended as published, dropped or delivery_failed."""
        return self.in_flight == 0 and self.attempted == (
            self.published + sum(self.dropped.values()) + self.delivery_failed)


class MirrorMetrics:
    """One mirror's counts. Thread-safe; each method takes one uncontended lock."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._lock = threading.Lock()
        self.attempted = 0
        self.accepted = 0  # into the hand-off buffer
        self.handled = 0  # taken out of it by the shipper (or counted unsent at close)
        self.enqueued = 0  # into librdkafka
        self.kafka_failed = 0
        self.delivered = 0  # acknowledged by the broker
        self.never_sent = 0
        self.sampled_out = 0
        self.dropped_by: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.buckets = [0] * (len(PUBLISH_BUCKETS) + 1)
        self.seconds_sum = 0.0

    def sampled(self) -> None:
        with self._lock:
            self.sampled_out += 1

    def attempt(self) -> None:
        with self._lock:
            self.attempted += 1

    def dropped(self, reason: str) -> None:
        with self._lock:
            self.dropped_by[reason] += 1

    def failed(self, n: int = 1) -> None:
        """librdkafka gave up on ``n`` enqueued events (a record)."""
        with self._lock:
            self.kafka_failed += n

    def acked(self, n: int) -> None:
        """The broker has ``n`` enqueued events (a record)."""
        with self._lock:
            self.delivered += n

    def accepted_one(self, seconds: float) -> None:
        """publish()'s common case in one lock round trip: attempted, accepted, duration."""
        with self._lock:
            self.attempted += 1
            self.accepted += 1
            self.buckets[bisect.bisect_left(PUBLISH_BUCKETS, seconds)] += 1
            self.seconds_sum += seconds

    def shipped(self, handled: int, enqueued: int) -> None:
        """The shipper took ``handled`` events from the buffer, ``enqueued`` of them into
        librdkafka (the others were counted as dropped)."""
        with self._lock:
            self.handled += handled
            self.enqueued += enqueued

    def unsent(self, n: int) -> None:
        """Events left in the buffer at close(): they count as delivery_failed."""
        with self._lock:
            self.handled += n
            self.never_sent += n

    def never_sent_events(self, n: int) -> None:
        """Events the shipper had taken but could not enqueue before close() stopped it."""
        with self._lock:
            self.never_sent += n

    def observe(self, seconds: float) -> None:
        with self._lock:
            self.buckets[bisect.bisect_left(PUBLISH_BUCKETS, seconds)] += 1
            self.seconds_sum += seconds

    def snapshot(self) -> MirrorCounts:
        with self._lock:
            in_kafka = self.enqueued - self.kafka_failed - self.delivered
            return MirrorCounts(
                attempted=self.attempted,
                published=self.delivered,
                dropped={r: n for r, n in self.dropped_by.items() if n},
                delivery_failed=self.kafka_failed + self.never_sent,
                sampled_out=self.sampled_out,
                in_flight=self.accepted - self.handled + in_kafka,
            )


class _MirrorCollector(Collector):
    """Renders every live mirror of one registry, summed by model."""

    def __init__(self) -> None:
        self.mirrors: weakref.WeakSet[MirrorMetrics] = weakref.WeakSet()

    def collect(self) -> Iterator[Metric]:
        attempted = CounterMetricFamily("shadow_mirror_attempted",
                                        "Requests publish() tried to mirror (after sampling)",
                                        labels=["model"])
        published = CounterMetricFamily("shadow_mirror_published",
                                        "Events Kafka acknowledged", labels=["model"])
        dropped = CounterMetricFamily("shadow_mirror_dropped",
                                      "Events dropped before Kafka, by reason",
                                      labels=["model", "reason"])
        failed = CounterMetricFamily("shadow_mirror_delivery_failed",
                                     "Events Kafka did not acknowledge in time", labels=["model"])
        sampled = CounterMetricFamily("shadow_mirror_sampled_out",
                                      "Requests left out by the sample rate", labels=["model"])
        seconds = HistogramMetricFamily("shadow_mirror_publish_seconds",
                                        "Time spent in publish()", labels=["model"])
        by_model: dict[str, list[MirrorMetrics]] = {}
        for m in list(self.mirrors):
            by_model.setdefault(m.model, []).append(m)
        for model, ms in sorted(by_model.items()):
            snaps = [m.snapshot() for m in ms]
            attempted.add_metric([model], sum(s.attempted for s in snaps))
            published.add_metric([model], sum(s.published for s in snaps))
            failed.add_metric([model], sum(s.delivery_failed for s in snaps))
            sampled.add_metric([model], sum(s.sampled_out for s in snaps))
            for reason in DROP_REASONS:
                dropped.add_metric([model, reason], sum(m.dropped_by[reason] for m in ms))
            counts = [sum(m.buckets[i] for m in ms) for i in range(len(PUBLISH_BUCKETS) + 1)]
            cumulative, total = [], 0
            for bound, n in zip([*map(str, PUBLISH_BUCKETS), "+Inf"], counts, strict=True):
                total += n
                cumulative.append((bound, total))
            seconds.add_metric([model], cumulative, sum(m.seconds_sum for m in ms))
        yield from (attempted, published, dropped, failed, sampled, seconds)


_collectors: weakref.WeakKeyDictionary[CollectorRegistry, _MirrorCollector] = (
    weakref.WeakKeyDictionary())
_collectors_lock = threading.Lock()


def register(registry: CollectorRegistry, metrics: MirrorMetrics) -> None:
    """Expose ``metrics`` in ``registry`` (one collector per registry, shared by mirrors)."""
    with _collectors_lock:
        collector = _collectors.get(registry)
        if collector is None:
            collector = _collectors[registry] = _MirrorCollector()
            registry.register(collector)
        collector.mirrors.add(metrics)


class RateLimitedLog:
    """One line per reason per interval, saying how many were suppressed since."""

    def __init__(self, log: logging.Logger, interval_s: float) -> None:
        self.log = log
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def warn(self, reason: str, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(reason)
            if last is not None and now - last < self.interval_s:
                self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
                return
            self._last[reason] = now
            n = self._suppressed.pop(reason, 0)
        more = f" ({n} more since the last report)" if n else ""
        self.log.warning("mirror %s: %s%s", reason, message, more)
