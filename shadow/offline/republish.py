"""Re-publish recorded messages to a topic at a controlled rate (``shadow replay --to-topic``).

A record of one event is sent as recorded (same key, same bytes), partitioned by key with
murmur2 like the mirror. A batch record (``batch/1``, as the mirror writes them) is cut by the
partition each event's request id has in the target topic, and each group sent as a batch to
that partition: the target may have another partition count than the recorded topic, and the
join finds a request's answers only in its request id's partition. The rate counts events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from schemas.codec import events_of, join_batch
from schemas.exceptions import ContractError
from schemas.topics import partitions_of

__all__ = ["republish"]


def republish(messages: Iterable[tuple[bytes | None, bytes]], producer: Any, topic: str, *,
              partitions: int, rate: float | None = None,
              progress: Callable[[int], None] | None = None) -> int:
    """Produce each recorded (key, value) to ``topic`` (of ``partitions`` partitions), at
    most ``rate`` events a second (None: as fast as the producer goes); waits for delivery
    and returns how many events were sent."""
    if rate is not None and rate <= 0:
        raise ValueError("rate must be positive")
    failures: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    def produce(value: bytes, key: bytes | None, partition: int | None) -> None:
        kwargs: dict[str, Any] = {"on_delivery": on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                producer.produce(topic, value, key, **kwargs)
                return
            except BufferError:  # the local queue is full: let it drain
                producer.poll(0.05)

    start = time.monotonic()
    sent = 0
    for key, value in messages:
        if rate is not None:
            due = start + sent / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        groups = _regrouped(value, partitions)  # None: not a batch (JSON keys have no order)
        if groups is None:
            produce(value, key, None)
            sent += 1
        else:
            for partition, (first_key, events) in groups.items():
                produce(join_batch(events) if len(events) > 1 else events[0], first_key,
                        partition)
                sent += len(events)
        producer.poll(0)
        if progress and sent // 1000 != (sent - 1) // 1000:
            progress(sent)
    left = producer.flush(60)
    if left or failures:
        raise RuntimeError(f"{left} messages not delivered, {len(failures)} failed"
                           f"{': ' + failures[0] if failures else ''}")
    return sent


def _regrouped(value: bytes, partitions: int) -> dict[int, tuple[bytes, list[bytes]]] | None:
    """A batch's events by their partition in the target (with the first one's key), each
    encoded again; None when the record is not a readable batch (sent as recorded: the join
    dead-letters what it cannot read, with the reason)."""
    try:
        events, batched = events_of(value)
    except ContractError:
        return None
    ids = [e.get("request_id") if isinstance(e, dict) else None for e in events]
    if not batched or not all(isinstance(i, str) and i for i in ids):
        return None
    keys = [i.encode() for i in ids]  # type: ignore[union-attr]
    groups: dict[int, tuple[bytes, list[bytes]]] = {}
    for key, event, p in zip(keys, events, partitions_of(keys, partitions), strict=True):
        groups.setdefault(p, (key, []))[1].append(orjson.dumps(event))
    return groups
