"""Test helpers shared by both tiers."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, Message

from schemas.codec import events_of, from_dict


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The Java client's default partitioner: toPositive(murmur2(key)) % partitions."""
    m, r = 0x5BD1E995, 24
    length = len(key)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(length // 4):
        k = int.from_bytes(key[4 * i:4 * i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = key[length & ~3:]
    if len(tail) >= 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions


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
