"""Re-publish recorded messages to a topic at a controlled rate (``shadow replay --to-topic``).

Keys and values are sent as recorded (same bytes), partitioned by key with murmur2 like the
mirror, so the live pipeline sees the recording as it saw the original traffic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["republish"]


def republish(messages: Iterable[tuple[bytes | None, bytes]], producer: Any, topic: str, *,
              rate: float | None = None, progress: Callable[[int], None] | None = None
              ) -> int:
    """Produce each (key, value) to ``topic``, at most ``rate`` a second (None: as fast as
    the producer goes); waits for delivery and returns how many were sent."""
    if rate is not None and rate <= 0:
        raise ValueError("rate must be positive")
    failures: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    start = time.monotonic()
    sent = 0
    for key, value in messages:
        if rate is not None:
            due = start + sent / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=on_delivery)
                break
            except BufferError:  # the local queue is full: let it drain
                producer.poll(0.05)
        producer.poll(0)
        sent += 1
        if progress and sent % 1000 == 0:
            progress(sent)
    left = producer.flush(60)
    if left or failures:
        raise RuntimeError(f"{left} messages not delivered, {len(failures)} failed"
                           f"{': ' + failures[0] if failures else ''}")
    return sent
