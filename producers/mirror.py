"""The mirror client: publishes MirroredRequest events without ever affecting the caller.

``publish()`` never raises and never waits on Kafka. Every event it accepts is counted as
attempted and ends as exactly one of published, dropped{reason} or delivery_failed, so that
``attempted = published + dropped + delivery_failed`` once delivery settles.

Events travel in batches: the shipper groups what it takes from the buffer by the partition
each request id goes to (murmur2, as every producer of the pipeline partitions) and sends one
``batch/1`` record per partition of up to ``batch_events`` events, so the join and the workers
pay Kafka's cost per record once per batch. A batch succeeds or fails as a whole; each of its
events is counted. Until the topic's partition count is known (no broker yet), and with
``batch_events=1``, each event is its own record.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer
from prometheus_client import REGISTRY, CollectorRegistry

from producers.config import MirrorConfig
from producers.metrics import MirrorMetrics, RateLimitedLog, register
from producers.sampling import sample_threshold, sampled
from schemas.codec import join_batch
from schemas.records import OUTPUT_KINDS, EventBatch, MirroredRequest
from schemas.topics import partitions_of

log = logging.getLogger("shadowstream.mirror")

SCHEMA = MirroredRequest.SCHEMA
_SCHEMA_HEADER = ("schema", SCHEMA.encode())
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
_ALL = 2**64  # sample threshold of rate 1.0
_BATCH = 1024  # events per shipper batch, with delivery reports served between batches
_NAP_MIN_S, _NAP_MAX_S = 0.001, 0.05  # the shipper's nap when the buffer is empty
_FULL_WAIT_S = 0.005  # when librdkafka's queue is full, wait this long before a retry
_BATCH_HEADER = ("schema", EventBatch.SCHEMA.encode())
_MAX_RECORD_BYTES = 900_000  # under librdkafka's default message.max.bytes, with headroom
_PARTITIONS_TTL_S = 30.0  # how long a topic's partition count is trusted

# What publish() hands to the shipper: request_id, inputs, output, latency_ms, error, ts,
# segment, tenant, trace_id.
_Pending = tuple[str, dict[str, Any], Any, float, str | None, int, str | None, str | None,
                 str | None]


def _output_problem(out: Mapping[str, Any]) -> str | None:
    """Why an answer is not one the workers can compare (cheap checks only: this runs for
    every event), else None."""
    kind, value = out.get("kind"), out.get("value")
    if kind not in OUTPUT_KINDS:
        return (f"the answer {dict(out)!r:.120} is not a model output: give a number, a "
                f"list, or {{'kind': one of {sorted(OUTPUT_KINDS)}, 'value': ...}} (with a "
                "middleware, output_field names the response field that holds it)")
    if kind == "scalar":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"a scalar answer must be a number, got {value!r:.80}"
    elif kind == "text":
        if not isinstance(value, str):
            return f"a text answer must be a string, got {value!r:.80}"
    elif kind == "json":
        if not isinstance(value, dict | list):
            return f"a json answer must be a JSON object or array, got {value!r:.80}"
    elif not isinstance(value, list) or not value or isinstance(value[0], bool) \
            or not isinstance(value[0], int | float):
        return (f"a {kind} answer must be a non-empty list of numbers, got {value!r:.80} "
                f"(MirrorConfig.output_kind is {kind!r})")
    return None


def _is_wire_output(out: Mapping[str, Any]) -> bool:
    """``{"kind": ..., "value": ...}`` as the contract writes an answer (a JSON service's own
    document is anything else)."""
    return set(out) <= {"kind", "value", "labels", "items"} and out.get("kind") in OUTPUT_KINDS


class Mirror:
    """Thread-safe synchronous mirror client. Use as a context manager or call close().

    publish() does only what must happen on the caller's thread (checks, sampling, a shallow
    copy of ``inputs``, a hand-off to a bounded buffer); a background thread, the shipper,
    builds, serializes and produces the events. So the request path pays about two
    microseconds, whatever Kafka does.

    Ownership: the top level of ``inputs`` is copied, nested values are not. Do not mutate
    nested lists or dicts of ``inputs``, or ``output``, after publishing them.
    """

    def __init__(self, config: MirrorConfig, registry: CollectorRegistry = REGISTRY) -> None:
        self.config = config
        # librdkafka's own log lines go to Python logging, never straight to the service's stderr.
        # A delivery report per record (a batch: one Python callback per batch of events).
        self._producer = Producer({**config.producer_config(), "error_cb": self._on_error,
                                   "logger": logging.getLogger("shadowstream.mirror.kafka")})
        self._buffer: deque[_Pending] = deque()
        self.metrics = MirrorMetrics(config.model)
        self._batch_events = config.batch_events
        self._partitions: int | None = None
        self._partitions_at = -_PARTITIONS_TTL_S
        self._batch_headers = [_BATCH_HEADER, ("model", config.model.encode())]
        register(registry, self.metrics)
        # Hot-path settings, read once.
        self._max_buffered = config.max_queue_messages
        self._live_version = config.live_version
        self._model = config.model
        self._output_kind = config.output_kind
        self._max_bytes = config.max_event_bytes
        self._pii = config.pii if config.pii.rules else None
        # Shared by every event without a trace id (librdkafka copies headers on produce).
        self._headers = [_SCHEMA_HEADER, ("model", config.model.encode())]
        self._threshold = sample_threshold(config.sample_rate)
        self._log = RateLimitedLog(log, config.log_interval_s)
        self._paused_until = 0.0
        self._shipping = False
        self._closed = False
        self._stop = threading.Event()
        self._shipper = threading.Thread(target=self._ship_loop, name="mirror-shipper",
                                         daemon=True)
        self._shipper.start()

    # -- the hot path: the caller's thread ---------------------------------------------------

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
        """Mirror one request and its live answer. Returns whether it was accepted.

        ``output`` is the model's answer: a number, a sequence (lists, numpy arrays and
        tensors are accepted), or a dict ``{"kind": ..., "value": ...}``. Never raises and
        never waits. An accepted event can still fail later (serialization, size, Kafka):
        that is counted, not returned.
        """
        t0 = time.perf_counter()
        try:
            if type(request_id) is not str or not request_id:
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
                self._fail("paused", "buffer was full; shedding load", t0)
                return False
            if len(self._buffer) >= self._max_buffered:
                if self.config.drop_policy == "pause":
                    self._paused_until = time.monotonic() + self.config.pause_ms / 1000
                self._fail("queue_full", "the buffer for Kafka is full", t0)
                return False
            try:
                inputs = dict(inputs)  # the top level is ours from here on
            except (TypeError, ValueError):
                self._fail("invalid", f"inputs must be a mapping, got {type(inputs).__name__}",
                           t0)
                return False
            self._buffer.append((request_id, inputs, output, latency_ms, error,
                                 ts if ts is not None else time.time_ns() // 1_000_000,
                                 segment, tenant, trace_id))
            self.metrics.accepted_one(time.perf_counter() - t0)
            return True
        except Exception as exc:  # nothing may reach the caller
            self._fail("internal", f"{type(exc).__name__}: {exc}", t0)
            return False

    # -- the shipper: a background thread ----------------------------------------------------

    def _ship_loop(self) -> None:
        # The shipper wakes on a timer, never on a signal from publish(): waking a thread per
        # event would hand the GIL back and forth per event, which costs more than the work.
        # It naps 1 ms after work and backs off to 50 ms when idle (delivery reports are
        # still served at that pace). close() sets _stop once its deadline has passed: what
        # is still buffered then is counted as delivery_failed by close(), not shipped.
        buffer = self._buffer
        nap = _NAP_MIN_S
        while not self._stop.is_set():
            try:
                if buffer:
                    self._ship_batch()
                    nap = _NAP_MIN_S
                else:
                    self._producer.poll(0)
                    self._stop.wait(nap)
                    nap = min(nap * 2, _NAP_MAX_S)
            except Exception as exc:  # the shipper must outlive any bug in one event
                self._log.warn("internal", f"shipper: {type(exc).__name__}: {exc}")

    def _ship_batch(self) -> None:
        """Serialize up to _BATCH buffered events and produce them, grouped by partition
        into batch records when the topic's partition count is known; then serve delivery
        reports."""
        buffer, encode = self._buffer, self._encode
        self._shipping = True
        keys: list[bytes] = []
        values: list[bytes] = []
        traces: list[str | None] = []
        times: list[int] = []
        handled = 0
        while handled < _BATCH and buffer:
            item = buffer.popleft()
            handled += 1
            value = encode(item)
            if value is not None:
                keys.append(item[0].encode())
                values.append(value)
                traces.append(item[8])
                times.append(item[5])
        enqueued = 0
        try:
            partitions = self._partition_count() if self._batch_events > 1 else None
            if partitions is None or len(values) == 1:
                for key, value, trace_id, ts in zip(keys, values, traces, times, strict=True):
                    headers = (self._headers if trace_id is None
                               else [*self._headers, ("trace_id", trace_id.encode())])
                    enqueued += self._produce(value, key, None, headers, 1, ts)
            else:
                groups: dict[int, list[int]] = {}
                for i, p in enumerate(partitions_of(keys, partitions)):
                    groups.setdefault(p, []).append(i)
                for p, rows in groups.items():
                    for chunk in self._chunks(rows, values):
                        value = (values[chunk[0]] if len(chunk) == 1
                                 else join_batch([values[i] for i in chunk]))
                        headers = self._headers if len(chunk) == 1 else self._batch_headers
                        enqueued += self._produce(value, keys[chunk[0]], p, headers, len(chunk),
                                                  times[chunk[0]])
        finally:
            # Events not enqueued (close() stopped the shipper) are counted there as unsent.
            self.metrics.shipped(handled, enqueued)
            self._shipping = False
            self._producer.poll(0)

    def _chunks(self, rows: list[int], values: list[bytes]) -> list[list[int]]:
        """Rows of one partition cut into records of at most batch_events events and
        _MAX_RECORD_BYTES bytes."""
        out: list[list[int]] = [[]]
        size = 0
        for i in rows:
            n = len(values[i]) + 1
            if out[-1] and (len(out[-1]) >= self._batch_events or size + n > _MAX_RECORD_BYTES):
                out.append([])
                size = 0
            out[-1].append(i)
            size += n
        return out

    def _produce(self, value: bytes, key: bytes, partition: int | None,
                 headers: list[tuple[str, bytes]], events: int, ts: int) -> int:
        """Enqueue one record of ``events`` events, its timestamp the event time of the
        first (what replay and ``shadow record --from @time`` order and find records by);
        returns how many events were enqueued."""
        kwargs: dict[str, Any] = {"headers": headers, "timestamp": ts,
                                  "on_delivery": functools.partial(self._on_delivery, events)}
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                self._producer.produce(self.config.topic, value, key, **kwargs)
                return events
            except BufferError:
                # Waiting here costs the caller nothing: the buffer fills, and publish()
                # drops by the configured policy once it is full.
                self._producer.poll(_FULL_WAIT_S)
                if self._stop.is_set():  # close() gave up waiting: delivery_failed
                    self.metrics.never_sent_events(events)
                    return 0
            except KafkaException as exc:
                for _ in range(events):
                    self._drop("produce_error", str(exc.args[0]))
                return 0

    def _partition_count(self) -> int | None:
        """The topic's partitions, asked of the broker at most every _PARTITIONS_TTL_S (None
        while it cannot say: events then go one per record, partitioned by librdkafka)."""
        now = time.monotonic()
        if now - self._partitions_at >= _PARTITIONS_TTL_S or self._partitions is None:
            self._partitions_at = now
            try:
                topic = self._producer.list_topics(self.config.topic, timeout=0.5).topics.get(
                    self.config.topic)
                if topic is not None and topic.error is None and topic.partitions:
                    self._partitions = len(topic.partitions)
            except KafkaException:
                pass  # no broker yet: asked again after the TTL
        return self._partitions

    def _encode(self, item: _Pending) -> bytes | None:
        """The event's JSON, or None when it cannot be sent (counted as dropped)."""
        request_id, inputs, output, latency_ms, error, ts, segment, tenant, trace_id = item
        live: dict[str, Any] = {"version": self._live_version, "latency_ms": latency_ms}
        if output is not None:
            out = ({"kind": self._output_kind, "value": output}
                   if type(output) is list else self._output(output))
            problem = _output_problem(out)
            if problem is not None:
                self._drop("invalid_output", f"{request_id}: {problem}")
                return None
            live["output"] = out
        if error is not None:
            live["error"] = error
        doc: dict[str, Any] = {"schema": SCHEMA, "request_id": request_id,
                               "model": self._model, "ts": ts, "inputs": inputs, "live": live}
        if segment is not None or tenant is not None or trace_id is not None:
            doc["attrs"] = {k: v for k, v in (("segment", segment), ("tenant", tenant),
                                              ("trace_id", trace_id)) if v is not None}
        try:
            value = orjson.dumps(doc, option=_DUMPS_OPTIONS)
            if self._pii is not None:
                # A deep copy through JSON: the policy never touches the caller's objects.
                value = orjson.dumps(self._pii.apply(orjson.loads(value)))
        except TypeError as exc:
            self._drop("serialization", f"{request_id}: {exc}")
            return None
        if len(value) > self._max_bytes:
            self._drop("too_large", f"{request_id}: {len(value)} bytes > max_event_bytes")
            return None
        return value

    def _output(self, output: Any) -> dict[str, Any]:
        if isinstance(output, Mapping):
            if self._output_kind == "json" and not _is_wire_output(output):
                return {"kind": "json", "value": dict(output)}  # the service's document
            return dict(output)
        if hasattr(output, "tolist"):  # numpy arrays, torch tensors
            output = output.tolist()
        return {"kind": self._output_kind, "value": output}

    # -- failure accounting ------------------------------------------------------------------

    def count_failure(self, reason: str, message: str) -> None:
        """Count a request that failed before publish() could take it (capture helpers)."""
        self.metrics.attempt()
        self.metrics.dropped(reason)
        self._log.warn(reason, message)

    def _fail(self, reason: str, message: str, t0: float) -> None:
        self.count_failure(reason, message)
        self.metrics.observe(time.perf_counter() - t0)

    def _drop(self, reason: str, message: str) -> None:
        """An accepted event the shipper could not send (it was counted as attempted)."""
        self.metrics.dropped(reason)
        self._log.warn(reason, message)

    def _on_delivery(self, events: int, err: KafkaError | None, _msg: Any) -> None:
        if err is None:
            self.metrics.acked(events)
        else:
            self.metrics.failed(events)
            self._log.warn("delivery_failed", err.str())

    def _on_error(self, err: KafkaError) -> None:
        self._log.warn("kafka", err.str())

    # -- lifecycle ---------------------------------------------------------------------------

    def pending(self) -> int:
        """Events accepted but not yet published or failed (buffered or in librdkafka)."""
        return self.metrics.snapshot().in_flight

    def _drain(self, deadline: float) -> None:
        """Wait until the shipper has emptied the buffer, or the deadline passes."""
        while ((self._buffer or self._shipping) and self._shipper.is_alive()
               and time.monotonic() < deadline):
            time.sleep(0.001)

    def flush(self, timeout_s: float | None = None) -> int:
        """Wait up to ``timeout_s`` for outstanding events; returns how many are still out."""
        deadline = time.monotonic() + (self.config.close_timeout_s if timeout_s is None
                                       else timeout_s)
        self._drain(deadline)
        self._producer.flush(max(0.0, deadline - time.monotonic()))
        return self.pending()

    def close(self, timeout_s: float | None = None) -> int:
        """Flush with a timeout, then stop. What is still out is dropped and counted as
        delivery_failed. Returns that number. Idempotent."""
        if self._closed:
            return 0
        self._closed = True
        left = self.flush(timeout_s)
        self._stop.set()
        self._shipper.join(timeout=2)
        unsent = len(self._buffer)
        self._buffer.clear()
        self.metrics.unsent(unsent)
        if len(self._producer):
            self._producer.purge()
            self._producer.poll(0)  # purged events' reports: they count as delivery_failed
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

