"""Where alerts go in Redis: a stream, a state hash per rule, a channel. Never stalls the join.

Per alert, atomically (one Lua script) and once (keyed by its alert id, so an alert the join
evaluates again after a restart is not delivered twice):

- ``XADD <prefix>:alerts MAXLEN ~ N`` with the alert as JSON;
- ``HSET <prefix>:alert:<model>:<candidate>:<rule>`` state, alert_id, value, ts, ...;
- ``PUBLISH <prefix>:alerts`` the JSON, for live views (``shadow alerts watch``).

The most divergent requests of each window go to the sorted set
``<prefix>:exemplars:<model>:<candidate>`` (best effort). The latest window of each model and
candidate is kept at ``<prefix>:window:<model>:<candidate>``
and published on ``<prefix>:windows`` (best effort). An alert is acknowledged by ops with
``shadow alerts ack ID`` (``acked_at`` in its state hash).

Every call has the client's timeout. When Redis is down, alerts wait in a bounded outbox (the
oldest are dropped and counted when it is full) and go out in order once it is back; retries
back off, so a dead Redis costs the stream one failed call per ``retry_s``, not one per event.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import orjson
import redis

from schemas import Alert, WindowSummary, encode

__all__ = ["RedisAlertSink"]

log = logging.getLogger("shadowstream.alerts")

_DELIVER = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[3]) then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'alert', ARGV[1])
  redis.call('HSET', KEYS[3], unpack(ARGV, 5))
  redis.call('PUBLISH', ARGV[4], ARGV[1])
  return 1
end
return 0
"""


class RedisAlertSink:
    def __init__(self, client: redis.Redis, prefix: str, *, stream_maxlen: int = 10_000,
                 outbox_max: int = 10_000, retry_s: float = 1.0,
                 dedupe_ttl_s: int = 7 * 24 * 3600, exemplars_max: int = 1000,
                 on_done: Callable[[str], None] | None = None) -> None:
        """``on_done(alert_id)`` is told when an alert is in Redis (or was dropped from a
        full outbox): the join then stops keeping it for a restart."""
        self.client = client
        self.on_done = on_done
        self.prefix = prefix
        self.stream_maxlen = stream_maxlen
        self.retry_s = retry_s
        self.dedupe_ttl_s = dedupe_ttl_s
        self.exemplars_max = exemplars_max
        self.outbox: deque[Alert] = deque()
        self.outbox_max = outbox_max
        self.delivered = 0
        self.duplicates = 0
        self.dropped = 0
        self.failures = 0
        self._retry_at = 0.0
        self._script = client.register_script(_DELIVER)

    @property
    def stream_key(self) -> str:
        return f"{self.prefix}:alerts"

    def state_key(self, model: str, candidate: str, rule: str) -> str:
        return f"{self.prefix}:alert:{model}:{candidate}:{rule}"

    def publish(self, alerts: Iterable[Alert]) -> None:
        """Queue alerts (in order) and try to deliver what waits."""
        for alert in alerts:
            if len(self.outbox) >= self.outbox_max:
                lost = self.outbox.popleft()
                self.dropped += 1
                if self.on_done is not None:
                    self.on_done(lost.alert_id)
            self.outbox.append(alert)
        self.flush()

    def flush(self) -> int:
        """Deliver waiting alerts in order until one fails; returns how many went out."""
        if not self.outbox or time.monotonic() < self._retry_at:
            return 0
        sent = 0
        while self.outbox:
            alert = self.outbox[0]
            try:
                self._deliver(alert)
            except redis.RedisError as exc:
                self.failures += 1
                self._retry_at = time.monotonic() + self.retry_s
                log.warning("alerts: Redis unavailable (%s); %d alerts wait", exc,
                            len(self.outbox))
                return sent
            self.outbox.popleft()
            sent += 1
            if self.on_done is not None:
                self.on_done(alert.alert_id)
        return sent

    def _deliver(self, a: Alert) -> None:
        doc = encode(a)
        fields: list[Any] = ["state", a.state, "previous_state", a.previous_state,
                             "alert_id", a.alert_id, "severity", a.severity,
                             "metric", a.metric, "threshold", a.threshold, "ts", a.ts,
                             "window_start", a.window_start, "window_end", a.window_end,
                             "value", "" if a.value is None else a.value, "alert", doc]
        keys = [f"{self.prefix}:alert-id:{a.alert_id}", self.stream_key,
                self.state_key(a.model, a.candidate, a.rule)]
        fresh = self._script(keys=keys, args=[doc, self.stream_maxlen, self.dedupe_ttl_s,
                                              self.stream_key, *fields])
        if fresh:
            self.delivered += 1
        else:
            self.duplicates += 1

    def record_window(self, summary: WindowSummary) -> None:
        """The latest closed window of a model and candidate, for live views. Best effort:
        when Redis is down it is skipped (the windows topic has them all)."""
        if summary.segment is not None or time.monotonic() < self._retry_at:
            return
        doc = summary.model_dump_json(by_alias=True, exclude={"state"}, exclude_none=True)
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.set(f"{self.prefix}:window:{summary.model}:{summary.candidate}", doc)
            pipe.publish(f"{self.prefix}:windows", doc)
            pipe.execute()
        except redis.RedisError:
            self.failures += 1
            self._retry_at = time.monotonic() + self.retry_s

    def record_exemplars(self, model: str, candidate: str, window_start: int,
                         top: list[tuple[Any, ...]]) -> None:
        """A window's most divergent requests, in the sorted set
        ``<prefix>:exemplars:<model>:<candidate>`` (member ``<window_start>:<request_id>``,
        score the divergence), trimmed to the ``exemplars_max`` highest. For a JSON answer,
        the fields that differed in ``<prefix>:exemplar:<model>:<candidate>:<member>``
        (comma-separated paths; kept as long as alert ids are). Best effort."""
        if not top or time.monotonic() < self._retry_at:
            return
        key = f"{self.prefix}:exemplars:{model}:{candidate}"
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.zadd(key, {f"{window_start}:{row[0]}": row[1] for row in top})
            for row in top:
                if len(row) > 2 and row[2]:
                    pipe.set(f"{self.prefix}:exemplar:{model}:{candidate}:{window_start}:"
                             f"{row[0]}", ",".join(row[2]), ex=self.dedupe_ttl_s)
            pipe.zremrangebyrank(key, 0, -self.exemplars_max - 1)
            pipe.execute()
        except redis.RedisError:
            self.failures += 1
            self._retry_at = time.monotonic() + self.retry_s

    def recent(self, count: int = 100) -> list[Alert]:
        """The last ``count`` alerts of the stream, oldest first."""
        rows = self.client.xrevrange(self.stream_key, count=count)
        return [Alert.model_validate(orjson.loads(fields[b"alert"]))
                for _, fields in reversed(rows)]
