"""``shadow profile build``: a drift reference from a time range of the requests topic."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import TopicPartition

from consumers.drift import Profile
from consumers.windows import request_features
from schemas import ContractError, MirroredRequest, decode
from shadow import clients
from shadow.exceptions import ShadowstreamError
from shadow.settings import Settings

__all__ = ["ProfileSet", "build_profiles", "parse_time"]


def parse_time(text: str) -> int:
    """Epoch milliseconds from an ISO 8601 time (UTC when no zone is given) or epoch ms."""
    if text.isdigit():
        return int(text)
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ShadowstreamError(f"{text!r} is neither an ISO time nor epoch ms") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


@dataclass
class ProfileSet:
    start_ms: int
    end_ms: int
    requests: int = 0
    skipped: int = 0
    profiles: dict[str, Profile] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"from": self.start_ms, "to": self.end_ms, "requests": self.requests,
                "models": {m: p.to_dict() for m, p in sorted(self.profiles.items())}}


def build_profiles(settings: Settings, bootstrap: str, start_ms: int, end_ms: int, *,
                   bins: int = 100, progress: Callable[[int], None] | None = None,
                   timeout_s: float = 30.0) -> ProfileSet:
    """Read the requests with start <= timestamp < end from every partition; profile each
    model. Reading stops at the end of the range or of the partition, whichever comes first."""
    topic = settings.topic("requests")
    consumer = clients.consumer(settings, bootstrap, "shadow-profile-build",
                                **{"enable.partition.eof": True})
    result = ProfileSet(start_ms, end_ms)
    rows: dict[str, list[dict[str, float | str]]] = defaultdict(list)
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise ShadowstreamError(f"topic {topic} does not exist")
        wanted = [TopicPartition(topic, p, start_ms) for p in sorted(meta.partitions)]
        starts = consumer.offsets_for_times(wanted, timeout=timeout_s)
        assignment = [tp for tp in starts if tp.offset >= 0]  # -1: nothing at or after start
        open_parts = {tp.partition for tp in assignment}
        consumer.assign(assignment)
        while open_parts:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().code() == -191:  # _PARTITION_EOF
                    open_parts.discard(msg.partition())
                    continue
                raise ShadowstreamError(f"reading {topic}: {msg.error().str()}")
            if msg.timestamp()[1] >= end_ms:
                open_parts.discard(msg.partition())
                continue
            try:
                r = decode(msg.value() or b"", MirroredRequest)
            except ContractError:
                result.skipped += 1
                continue
            output = r.live.output.model_dump(exclude_none=True) if r.live.output else None
            rows[r.model].append(request_features(r.inputs, output))
            result.requests += 1
            if progress and result.requests % 1000 == 0:
                progress(result.requests)
    finally:
        consumer.close()
    if not rows:
        raise ShadowstreamError(f"no requests in {topic} between {start_ms} and {end_ms}")
    result.profiles = {m: Profile.build(r, bins=bins, source=f"{topic} [{start_ms}, {end_ms})")
                       for m, r in rows.items()}
    return result
