"""Re-publishing a recording: batches are cut by their events' partitions in the target."""

from __future__ import annotations

from typing import Any

import orjson

from schemas.codec import events_of, join_batch
from schemas.topics import partition_of
from shadow.offline.republish import republish


class _Producer:
    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes | None, int | None]] = []

    def produce(self, topic: str, value: bytes, key: bytes | None, on_delivery: Any = None,
                partition: int | None = None) -> None:
        self.records.append((value, key, partition))

    def poll(self, _timeout: float) -> int:
        return 0

    def flush(self, _timeout: float) -> int:
        return 0


def _event(i: int) -> bytes:
    return orjson.dumps({"schema": "mirror.request/1", "request_id": f"r{i}", "model": "m",
                         "ts": 1, "inputs": {}, "live": {"version": "v", "latency_ms": 1}})


def test_batches_go_to_their_events_partitions_of_the_target_and_singles_stay_as_recorded(
        ) -> None:
    ids = range(40)
    recorded_on_3 = {}
    for i in ids:  # as the mirror wrote them on a topic of 3 partitions
        recorded_on_3.setdefault(partition_of(f"r{i}".encode(), 3), []).append(_event(i))
    messages = [(orjson.loads(evs[0])["request_id"].encode(), join_batch(evs))
                for evs in recorded_on_3.values()]
    messages.append((b"r99", _event(99)))  # a single event, from any Kafka client
    # a batch whose JSON names its events before its schema (Go's encoding/json sorts keys)
    sorted_keys = orjson.dumps({"events": [orjson.loads(_event(i)) for i in (40, 41, 42)],
                                "schema": "batch/1"})
    messages.append((b"r40", sorted_keys))
    ids = range(43)
    producer = _Producer()
    assert republish(messages, producer, "t", partitions=5) == 44
    seen = []
    for value, key, partition in producer.records:
        events, batched = events_of(value)
        for e in events:
            seen.append(e["request_id"])
            if partition is not None:  # a batch, placed by the producer itself
                assert partition == partition_of(e["request_id"].encode(), 5)
        if not batched and partition is None:
            assert (key, value) == (b"r99", _event(99))  # as recorded
        else:
            assert key == events[0]["request_id"].encode()
    assert sorted(seen) == sorted([f"r{i}" for i in ids] + ["r99"])
    # each recorded batch cut in five at most, and the single event
    assert len(producer.records) <= 4 * 5 + 1
