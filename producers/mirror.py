"""The mirror client: publishes MirroredRequest events without ever affecting the caller.

``publish()`` never raises and never waits on Kafka. Every event it accepts is counted as
attempted and ends as exactly one of published, dropped{reason} or delivery_failed, so that
``attempted = published + dropped + delivery_failed`` once delivery settles.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer
from prometheus_client import REGISTRY, CollectorRegistry

from producers.config import MirrorConfig
from producers.metrics import MirrorMetrics, register
from producers.sampling import sample_threshold, sampled

log = logging.getLogger("shadowstream.mirror")

SCHEMA = "mirror.request/1"
_SCHEMA_HEADER = ("schema", SCHEMA.encode())
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
_ALL = 2**64  # sample threshold of rate 1.0


class _RateLimitedLog:
    """One line per reason per interval, saying how many were suppressed since."""

    def __init__(self, interval_s: float) -> None:
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
        log.warning("mirror %s: %s%s", reason, message, more)


class Mirror:
    """Thread-safe synchronous mirror client. Use as a context manager or call close()."""

    def __init__(self, config: MirrorConfig, registry: CollectorRegistry = REGISTRY) -> None:
        self.config = config
        # librdkafka's own log lines go to Python logging, never straight to the service's stderr.
        # Delivery reports only for failures: a Python callback per acknowledged event would
        # cost more than the rest of publish() together (see producers/metrics.py).
        self._producer = Producer({**config.producer_config(), "error_cb": self._on_error,
                                   "delivery.report.only.error": True,
                                   "logger": logging.getLogger("shadowstream.mirror.kafka")})
        self.metrics = MirrorMetrics(config.model, self.pending)
        register(registry, self.metrics)
        # Hot-path settings, read once.
        self._topic = config.topic
        self._model = config.model
        self._live_version = config.live_version
        self._max_bytes = config.max_event_bytes
        self._pii = config.pii if config.pii.rules else None
        self._threshold = sample_threshold(config.sample_rate)
        self._model_header = ("model", config.model.encode())
        self._log = _RateLimitedLog(config.log_interval_s)
        self._paused_until = 0.0
        self._closed = False
        self._stop = threading.Event()
        # Delivery reports must run even when the service publishes nothing for a while.
        self._poller = threading.Thread(target=self._poll_loop, name="mirror-poll", daemon=True)
        self._poller.start()

    # -- the hot path ------------------------------------------------------------------------

    def publish(
        self,
        request_id: str,
        inputs: Mapping[str, Any],
        output: Any = None,
        *,
        latency_ms: float = 0.0,
        error: str | None = None,
        ts: int | None = None,
        segment: str | None = None,
        tenant: str | None = None,
        trace_id: str | None = None,
    ) -> bool:
        """Mirror one request and its live answer. Returns whether it was queued for Kafka.

        ``output`` is the model's answer: a number, a sequence (lists, numpy arrays and
        tensors are accepted), or a dict ``{"kind": ..., "value": ...}``. Never raises.
        """
        t0 = time.perf_counter()
        try:
            if not isinstance(request_id, str) or not request_id:
                self._fail("invalid",
                           f"request_id must be a non-empty string, got {request_id!r}", t0)
                return False
            if self._threshold < _ALL and not sampled(request_id, self._threshold):
                self.metrics.sampled()
                return False
            if self._closed:
                self._fail("closed", "publish() after close()", t0)
                return False
            if self._paused_until and time.monotonic() < self._paused_until:
                self._fail("paused", "queue was full; shedding load", t0)
                return False

            live: dict[str, Any] = {"version": self._live_version, "latency_ms": latency_ms}
            if output is not None:
                live["output"] = self._output(output)
            if error is not None:
                live["error"] = error
            doc: dict[str, Any] = {
                "schema": SCHEMA,
                "request_id": request_id,
                "model": self._model,
                "ts": ts if ts is not None else time.time_ns() // 1_000_000,
                "inputs": inputs if type(inputs) is dict else dict(inputs),
                "live": live,
            }
            if segment is not None or tenant is not None or trace_id is not None:
                doc["attrs"] = {k: v for k, v in (("segment", segment), ("tenant", tenant),
                                                  ("trace_id", trace_id)) if v is not None}
            try:
                value = orjson.dumps(doc, option=_DUMPS_OPTIONS)
                if self._pii is not None:
                    # A deep copy through JSON: the policy never touches the caller's objects.
                    value = orjson.dumps(self._pii.apply(orjson.loads(value)))
            except TypeError as exc:
                self._fail("serialization", str(exc), t0)
                return False
            if len(value) > self._max_bytes:
                self._fail("too_large", f"{len(value)} bytes > max_event_bytes", t0)
                return False

            headers = [_SCHEMA_HEADER, self._model_header]
            if trace_id is not None:
                headers.append(("trace_id", trace_id.encode()))
            try:
                self._producer.produce(self._topic, value, request_id.encode(),
                                       headers=headers, on_delivery=self._on_delivery)
            except BufferError:
                if self.config.drop_policy == "pause":
                    self._paused_until = time.monotonic() + self.config.pause_ms / 1000
                self._fail("queue_full", "the local queue for Kafka is full", t0)
                return False
            except KafkaException as exc:
                self._fail("produce_error", str(exc.args[0]), t0)
                return False
            # Counted before poll(0) can report this event's failure.
            self.metrics.enqueued_one(time.perf_counter() - t0)
            self._producer.poll(0)
            return True
        except Exception as exc:  # nothing may reach the caller
            self._fail("internal", f"{type(exc).__name__}: {exc}", t0)
            return False

    def _output(self, output: Any) -> dict[str, Any]:
        if isinstance(output, Mapping):
            return dict(output)
        if hasattr(output, "tolist"):  # numpy arrays, torch tensors
            output = output.tolist()
        return {"kind": self.config.output_kind, "value": output}

    # -- failure accounting ------------------------------------------------------------------

    def count_failure(self, reason: str, message: str) -> None:
        """Count a request that failed before publish() could take it (capture helpers)."""
        self.metrics.attempt()
        self.metrics.dropped(reason)
        self._log.warn(reason, message)

    def _fail(self, reason: str, message: str, t0: float) -> None:
        self.count_failure(reason, message)
        self.metrics.observe(time.perf_counter() - t0)

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:  # only failures are reported (delivery.report.only.error)
            self.metrics.failed()
            self._log.warn("delivery_failed", err.str())

    def _on_error(self, err: KafkaError) -> None:
        self._log.warn("kafka", err.str())

    # -- lifecycle ---------------------------------------------------------------------------

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._producer.poll(0.1)
            except Exception as exc:
                self._log.warn("internal", f"poll: {exc}")

    def pending(self) -> int:
        """Events queued or in flight, not yet published or failed."""
        return len(self._producer)

    def flush(self, timeout_s: float | None = None) -> int:
        """Wait up to ``timeout_s`` for outstanding events; returns how many are still out."""
        return self._producer.flush(self.config.close_timeout_s if timeout_s is None
                                    else timeout_s)

    def close(self, timeout_s: float | None = None) -> int:
        """Flush with a timeout, then stop. What is still out is purged and counted as
        delivery_failed. Returns that number. Idempotent."""
        if self._closed:
            return 0
        self._closed = True
        left = self.flush(timeout_s)
        if left:
            self._producer.purge()
            self._producer.poll(0)  # purged events' reports: they count as delivery_failed
        self._stop.set()
        self._poller.join(timeout=1)
        return left

    def __enter__(self) -> Mirror:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncMirror:
    """The mirror client for asyncio services. ``publish()`` needs no await: it never waits."""

    def __init__(self, config: MirrorConfig, registry: CollectorRegistry = REGISTRY) -> None:
        self._mirror = Mirror(config, registry)
        self.config = config
        self.metrics = self._mirror.metrics

    def publish(self, request_id: str, inputs: Mapping[str, Any], output: Any = None,
                **kwargs: Any) -> bool:
        """Same as Mirror.publish: never raises, never blocks the event loop."""
        return self._mirror.publish(request_id, inputs, output, **kwargs)

    async def flush(self, timeout_s: float | None = None) -> int:
        return await asyncio.to_thread(self._mirror.flush, timeout_s)

    async def close(self, timeout_s: float | None = None) -> int:
        """Flush without blocking the event loop, then stop."""
        return await asyncio.to_thread(self._mirror.close, timeout_s)

    def pending(self) -> int:
        return self._mirror.pending()

    async def __aenter__(self) -> AsyncMirror:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

