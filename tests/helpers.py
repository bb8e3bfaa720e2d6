"""Test helpers shared by both tiers."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, Message

from schemas.codec import events_of, from_dict
from schemas.topics import partition_of

# The pipeline's partitioner (the Java client's murmur2), checked against Kafka's own test
# vectors in test_helpers and against librdkafka's choice in test_worker.
murmur2_partition = partition_of


def consume_all(make_consumer: Callable[[str], Consumer], topic: str, expected: int,
                timeout_s: float = 30.0) -> list[Message]:
    """Read ``topic`` from the beginning until ``expected`` messages (or the timeout)."""
    cons = make_consumer(f"reader-{uuid.uuid4().hex}")
    cons.subscribe([topic])
    out: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expected and time.monotonic() < deadline:
            msg = cons.poll(0.5)
            if msg is not None and not msg.error():
                out.append(msg)
    finally:
        cons.close()
    return out


def consume_events(make_consumer: Callable[[str], Consumer], topic: str, record_type: type,
                   expected: int, timeout_s: float = 30.0) -> list[tuple[Any, Message]]:
    """Read ``topic`` from the beginning until ``expected`` events (records of one event or
    batches, each event decoded as ``record_type``), with the record each came in."""
    cons = make_consumer(f"reader-{uuid.uuid4().hex}")
    cons.subscribe([topic])
    out: list[tuple[Any, Message]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expected and time.monotonic() < deadline:
            msg = cons.poll(0.5)
            if msg is not None and not msg.error():
                events, _ = events_of(msg.value())
                out += [(from_dict(e, record_type), msg) for e in events]
    finally:
        cons.close()
    return out
