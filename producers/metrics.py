"""The mirror's counters in the caller's Prometheus registry, labelled by model."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

# publish() takes microseconds: buckets from 5 µs to 10 ms.
PUBLISH_BUCKETS = (5e-6, 10e-6, 20e-6, 50e-6, 100e-6, 250e-6, 1e-3, 10e-3)
DROP_REASONS = ("invalid", "closed", "paused", "serialization", "too_large", "queue_full",
                "produce_error", "internal")


class _Families:
    """The metric families, created once per registry (a second Mirror reuses them)."""

    _by_registry: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = (
        weakref.WeakKeyDictionary())

    def __init__(self, registry: CollectorRegistry) -> None:
        kw = {"registry": registry, "labelnames": ["model"]}
        self.attempted = Counter("shadow_mirror_attempted",
                                 "Requests publish() tried to mirror (after sampling)", **kw)
        self.published = Counter("shadow_mirror_published", "Events Kafka acknowledged", **kw)
        self.dropped = Counter("shadow_mirror_dropped", "Events dropped before Kafka, by reason",
                               registry=registry, labelnames=["model", "reason"])
        self.delivery_failed = Counter("shadow_mirror_delivery_failed",
                                       "Events Kafka did not acknowledge in time", **kw)
        self.sampled_out = Counter("shadow_mirror_sampled_out",
                                   "Requests left out by the sample rate", **kw)
        self.publish_seconds = Histogram("shadow_mirror_publish_seconds",
                                         "Time spent in publish()", buckets=PUBLISH_BUCKETS, **kw)

    @classmethod
    def of(cls, registry: CollectorRegistry) -> _Families:
        found = cls._by_registry.get(registry)
        if found is None:
            found = cls._by_registry[registry] = cls(registry)
        return found


@dataclass(frozen=True)
class MirrorCounts:
    attempted: int
    published: int
    dropped: dict[str, int]
    delivery_failed: int
    sampled_out: int

    @property
    def settled(self) -> bool:
        """Every attempted event has ended as published, dropped or delivery_failed."""
        return self.attempted == self.published + sum(self.dropped.values()) + self.delivery_failed


class MirrorMetrics:
    """One model's counters. ``dropped(reason)`` counts one drop."""

    def __init__(self, registry: CollectorRegistry, model: str) -> None:
        fam = _Families.of(registry)
        self._registry = registry
        self.model = model
        self.attempted = fam.attempted.labels(model)
        self.published = fam.published.labels(model)
        self.delivery_failed = fam.delivery_failed.labels(model)
        self.sampled_out = fam.sampled_out.labels(model)
        self.publish_seconds = fam.publish_seconds.labels(model)
        self._dropped = {r: fam.dropped.labels(model, r) for r in DROP_REASONS}

    def dropped(self, reason: str) -> None:
        self._dropped[reason].inc()

    def snapshot(self) -> MirrorCounts:
        def get(name: str, **labels: str) -> int:
            v = self._registry.get_sample_value(name, {"model": self.model, **labels})
            return int(v or 0)

        dropped = {r: get("shadow_mirror_dropped_total", reason=r) for r in DROP_REASONS}
        return MirrorCounts(
            attempted=get("shadow_mirror_attempted_total"),
            published=get("shadow_mirror_published_total"),
            dropped={r: n for r, n in dropped.items() if n},
            delivery_failed=get("shadow_mirror_delivery_failed_total"),
            sampled_out=get("shadow_mirror_sampled_out_total"),
        )
