"""The shadow worker: mirrored requests in, one ShadowOutput per request out, at least once.

Records in may carry one request or a batch (``batch/1``, as the mirror client writes them);
answers go out as one record per input partition and consumed batch, on that partition.

The loop, on one thread, with inference on a second so that the two overlap::

    consume up to max_batch (waits at most max_wait)      <- librdkafka's batching
    decode + validate; what fails goes to dead-letter
    prepare batch N+1 (collate; on CUDA, copy on a side stream)
    finish batch N: its answers -> <prefix>.outputs, each to its request's partition
    start batch N+1's model on the inference thread (the answers are built on this one)
    every commit interval: flush the producer, then commit what it delivered

Offsets move only past requests whose output (or dead-letter record) was produced, and are
committed only after the producer has flushed them. A crash therefore loses nothing; what was
processed after the last commit is processed again (the join drops the duplicates). A delivery
that fails for good stops the worker without committing, for the same reason.
"""

from __future__ import annotations

import collections
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from prometheus_client import CollectorRegistry, start_http_server

from schemas.builders import dead_letter, shadow_output
from schemas.codec import as_request, encode_batch, events_of
from schemas.exceptions import ContractError
from shadow import clients
from shadow.exceptions import (
    KafkaUnreachableError,
    ShadowstreamError,
    TopicMismatchError,
    reason_key,
)
from shadow.runtime.config import WorkerConfig, tune_collector
from shadow.runtime.engine import Forwarded, InferenceEngine, Prepared
from shadow.runtime.metrics import WorkerMetrics
from shadow.settings import Settings

log = logging.getLogger("shadowstream.worker")

_PROGRESS_EVERY_S = 10.0
OUTPUT_RECORD_EVENTS = 500  # answers per output record


class WorkerError(ShadowstreamError):
    """The worker cannot go on (a delivery failed for good, a fatal Kafka error)."""


@dataclass
class _Batch:
    """A consumed batch on its way through the model."""

    origins: list[tuple[Message, int | None]]  # each request's record, and its index there
    requests: list[dict[str, Any]]  # the valid requests (as_request), in order
    partitions: list[int]  # each request's input partition (its answer goes there too)
    ends: dict[int, int]  # partition -> next offset once this batch is out (incl. dead letters)
    prepared: Prepared | None = None
    forwarded: Future[Forwarded | None] | None = None  # the model's results, on their way
    consumed: float = field(default_factory=time.perf_counter)  # when its records came


@dataclass
class WorkerStats:
    answered: int = 0
    """Requests answered with an output."""
    errors: int = 0
    """Requests answered with an error (the model failed on them)."""
    dead_lettered: int = 0
    """Requests not answered at all: their dead letter is all there is of them."""
    dead_letters: int = 0
    """Dead-letter records written: the above, and answered requests kept for a look (input
    that does not fit the model)."""
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    """Why requests were answered with an error or dead-lettered, most frequent first."""
    committed: dict[int, int] = field(default_factory=dict)

    @property
    def handled(self) -> int:
        return self.answered + self.errors + self.dead_lettered

    def top_reasons(self, n: int = 3) -> str:
        return "; ".join(f"{count} x {reason}" for reason, count in self.reasons.most_common(n))


class ShadowWorker:
    """Consumes ``<prefix>.requests``, answers with the engine, produces ``<prefix>.outputs``."""

    def __init__(self, settings: Settings, bootstrap: str, config: WorkerConfig,
                 engine: InferenceEngine, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.config = config
        self.engine = engine
        self.registry = registry or CollectorRegistry()
        self.metrics = WorkerMetrics(config.candidate_id, self.registry)
        engine.observer = self.metrics
        self.requests_topic = settings.topic("requests")
        self.outputs_topic = settings.topic("outputs")
        self.deadletter_topic = settings.topic("deadletter")
        self.stats = WorkerStats()
        self._models = frozenset(config.models)
        self._consumer: Consumer = clients.consumer(
            settings, bootstrap, config.group_id(settings),
            **{"enable.partition.eof": False, "fetch.wait.max.ms": 50,
               "session.timeout.ms": config.session_timeout_ms})
        self._producer: Producer = clients.producer(
            settings, bootstrap, **{"delivery.report.only.error": True,
                                    "on_delivery": self._on_delivery})
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="shadow-infer")
        self._inflight: _Batch | None = None
        self._done: dict[int, int] = {}  # partition -> next offset whose output is produced
        self._failed: list[str] = []
        self._broken = False
        self.assigned: frozenset[int] = frozenset()
        """The partitions of the requests topic this worker owns now."""
        self._last_log = time.monotonic()
        self._handled_at_log = 0  # progress is logged only when something happened since
        self._stopping = threading.Event()
        self._last_commit = time.monotonic()
        self._handled_at_commit = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to drain, deliver, commit and return (safe from a signal handler)."""
        self._stopping.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def run(self, until: Callable[[WorkerStats], bool] | None = None) -> WorkerStats:
        """Serve until stop() (or ``until(stats)`` is true), then drain and commit."""
        self.check_topics()
        tune_collector()
        if self.config.metrics_port is not None:
            start_http_server(self.config.metrics_port, registry=self.registry)
        self._consumer.subscribe([self.requests_topic], on_assign=self._on_assign,
                                 on_revoke=self._on_revoke)
        max_wait_s = self.config.max_wait_ms / 1000
        try:
            while not self._stopping.is_set() and not (until and until(self.stats)):
                messages = self._consumer.consume(self.config.max_batch, max_wait_s)
                batch = self._decode(messages) if messages else None
                if batch is not None and batch.requests:
                    # Host work for the next batch while the current one is on the model.
                    batch.prepared = self.engine.prepare([r["inputs"] for r in batch.requests])
                self._finish_inflight()
                if batch is not None:
                    self._start(batch)
                self._maybe_commit()
            self._finish_inflight()
            self._commit()
            self._update_lag()
        finally:
            self._close()
        return self.stats

    def _close(self) -> None:
        self._pool.shutdown(wait=True)
        try:
            self._consumer.close()  # leaves the group now: the others take over at once
        except KafkaException as exc:
            log.warning("closing the consumer: %s", exc)
        self._producer.flush(self.config.flush_timeout_s)

    def check_topics(self) -> None:
        """TopicMismatchError unless the three topics exist with agreeing partitions."""
        try:
            meta = self._consumer.list_topics(timeout=self.settings.kafka_timeout_s)
        except KafkaException as exc:
            raise KafkaUnreachableError(self.bootstrap, self.settings.kafka_timeout_s,
                                        exc.args[0].str()) from None
        counts = {t: len(meta.topics[t].partitions) for t in
                  (self.requests_topic, self.outputs_topic, self.deadletter_topic)
                  if t in meta.topics and meta.topics[t].error is None}
        missing = [t for t in (self.requests_topic, self.outputs_topic, self.deadletter_topic)
                   if t not in counts]
        if missing:
            raise TopicMismatchError([f"{t} does not exist" for t in missing],
                                     "Run `shadow topics create`")
        if counts[self.outputs_topic] < counts[self.requests_topic]:
            raise TopicMismatchError([
                f"{self.outputs_topic} has {counts[self.outputs_topic]} partitions, "
                f"{self.requests_topic} has {counts[self.requests_topic]}"],
                "Requests and outputs must have the same count: `shadow topics delete --yes` "
                "and create them again")

    # -- the stages --------------------------------------------------------------------------

    def _decode(self, messages: list[Message]) -> _Batch:
        """The valid requests of the consumed records (one event or a batch each); what is
        not valid goes to dead letter, event by event."""
        batch = _Batch([], [], [], {})
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise WorkerError(f"fatal Kafka error: {err.str()}")
                log.warning("consumer: %s", err.str())
                continue
            partition, offset = msg.partition(), msg.offset()
            batch.ends[partition] = offset + 1
            try:
                events, batched = events_of(msg.value() or b"")
            except ContractError as exc:
                self._dead_letter(msg, None, None, exc.stage, str(exc), exc.path, "decode")
                continue
            for i, doc in enumerate(events):
                index = i if batched else None
                try:
                    request = as_request(doc)
                except ContractError as exc:
                    self._dead_letter(msg, index, doc, exc.stage, str(exc), exc.path,
                                      "decode")
                    continue
                if self._models and request["model"] not in self._models:
                    self._dead_letter(msg, index, doc, "validate",
                                      f"unknown model {request['model']!r} (this worker "
                                      f"shadows {', '.join(sorted(self._models))})", "model",
                                      "unknown_model")
                    continue
                batch.origins.append((msg, index))
                batch.requests.append(request)
                batch.partitions.append(partition)
        return batch

    def _start(self, batch: _Batch) -> None:
        if batch.requests:
            assert batch.prepared is not None
            # Only the model on the inference thread: the answers are built here, in
            # _finish_inflight, while that thread runs the next batch (Python per row on
            # both threads would take turns on the GIL).
            batch.forwarded = self._pool.submit(self.engine.forward, batch.prepared)
        self._inflight = batch

    def _finish_inflight(self) -> None:
        batch, self._inflight = self._inflight, None
        if batch is None:
            return
        answers = (self.engine.answer(batch.prepared, batch.forwarded.result())
                   if batch.forwarded is not None and batch.prepared is not None else [])
        cid = self.config.candidate_id
        # One record per input partition: the answers to that partition's requests, in one
        # batch (a record of one event when there is one), on the partition they came from.
        by_partition: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
        for (msg, index), partition, request, answer in zip(
                batch.origins, batch.partitions, batch.requests, answers, strict=True):
            by_partition[partition].append(shadow_output(
                request["request_id"], request["model"], request["ts"], cid, answer.output,
                answer.latency_ms, answer.error, self.config.control))
            if answer.error_kind == "input":  # answered with the error, and kept for a look
                self._dead_letter(msg, index, None if index is None else request, "model",
                                  f"input does not fit the model: {answer.error}", "inputs",
                                  None)
        for partition, docs in by_partition.items():
            # Records of at most OUTPUT_RECORD_EVENTS answers: far under Kafka's 1 MB.
            for i in range(0, len(docs), OUTPUT_RECORD_EVENTS):
                part = docs[i:i + OUTPUT_RECORD_EVENTS]
                value = encode_batch(part) if len(part) > 1 else orjson.dumps(part[0])
                self._produce(self._producer.produce, self.outputs_topic, value,
                              part[0]["request_id"].encode(), partition)
        n_err = 0
        for a in answers:
            if a.error is not None:
                n_err += 1
                self.stats.reasons[reason_key(a.error)] += 1
        self.stats.answered += len(answers) - n_err
        self.stats.errors += n_err
        self.metrics.events.labels(cid, "answered").inc(len(answers) - n_err)
        if n_err:
            self.metrics.events.labels(cid, "error").inc(n_err)
        self._done.update(batch.ends)
        self.metrics.batch_latency.observe(time.perf_counter() - batch.consumed)

    def _produce(self, produce: Any, topic: str, value: bytes, key: bytes | None,
                 partition: int = -1) -> None:
        """Produce, waiting while the producer's queue is full. Partition -1: by key."""
        while True:
            try:
                produce(topic, value, key, partition=partition)
                return
            except BufferError:  # the producer's queue is full: let it drain, then retry
                self._producer.poll(0.05)

    def _dead_letter(self, msg: Message, index: int | None, event: Any, stage: str,
                     reason: str, detail: str, error_kind: str | None) -> None:
        """The request's original bytes to <prefix>.deadletter, with why (an event of a
        batch: that event, and its index). ``error_kind``: the request gets no answer
        (counted as dead-lettered); None: it was answered."""
        if index is None:
            value, key = msg.value() or b"", msg.key()
        else:
            value = orjson.dumps(event)
            rid = event.get("request_id") if isinstance(event, dict) else None
            key = rid.encode() if isinstance(rid, str) else None
        source = [msg.topic(), msg.partition(), msg.offset()]
        if index is not None:
            source.append(index)
        record = dead_letter(stage, reason, ts=time.time_ns() // 1_000_000, source=source,
                             key=key, value=value, detail=detail)
        self._produce(self._producer.produce, self.deadletter_topic, orjson.dumps(record), key)
        self.stats.dead_letters += 1
        self.metrics.dead_letters.labels(self.config.candidate_id, stage).inc()
        if error_kind is not None:
            self.stats.dead_lettered += 1
            self.stats.reasons[reason_key(reason)] += 1
            self.metrics.events.labels(self.config.candidate_id, "deadletter").inc()
            self.metrics.error(error_kind, 1)

    # -- offsets -----------------------------------------------------------------------------

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:  # only failures are reported (delivery.report.only.error)
            self._failed.append(err.str())
            self.metrics.error("delivery", 1)

    def _maybe_commit(self) -> None:
        self._producer.poll(0)
        now = time.monotonic()
        if now - self._last_commit >= self.config.commit_interval_s:
            self._commit()
            elapsed = now - self._last_commit
            self.metrics.rate_value = (self.stats.handled - self._handled_at_commit) / elapsed
            self.metrics.rate.set(self.metrics.rate_value)
            self._handled_at_commit = self.stats.handled
            self._last_commit = now
            self._update_lag()
            s = self.stats
            if now - self._last_log >= _PROGRESS_EVERY_S and s.handled != self._handled_at_log:
                self._last_log = now
                self._handled_at_log = s.handled
                log.info("%s: %d answered, %d errors, %d dead letters written, %.0f/s%s",
                         self.config.candidate_id, s.answered, s.errors, s.dead_letters,
                         self.metrics.rate_value,
                         f" (top reasons: {s.top_reasons()})" if s.reasons else "")

    def _commit(self, partitions: set[int] | None = None) -> None:
        """Flush what was produced, then commit the offsets past it."""
        todo = {p: o for p, o in self._done.items()
                if (partitions is None or p in partitions) and self.stats.committed.get(p) != o}
        if not todo:
            return
        left = self._producer.flush(self.config.flush_timeout_s)
        if self._failed or left:
            self._broken = True
            raise WorkerError(
                f"{len(self._failed)} output(s) not delivered ({'; '.join(self._failed[:3])}), "
                f"{left} still queued: stopping without committing, so that they are "
                "processed again on restart")
        try:
            self._consumer.commit(offsets=[TopicPartition(self.requests_topic, p, o)
                                           for p, o in todo.items()], asynchronous=False)
        except KafkaException as exc:
            err = exc.args[0]
            if err.fatal():
                raise WorkerError(f"fatal Kafka error on commit: {err.str()}") from None
            # The group moved on (a rebalance, a broker restarted and forgot this member) or
            # the coordinator is away: the outputs are delivered, only their offsets are not
            # committed. Retried at the next interval; if another worker takes the
            # partitions first it answers those requests again, and the join drops the
            # duplicates.
            log.warning("commit failed, retried later: %s", err.str())
            self.metrics.error("commit", len(todo))
            return
        self.stats.committed.update(todo)

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned = self.assigned | {tp.partition for tp in partitions}

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned = self.assigned - {tp.partition for tp in partitions}
        # Runs inside consume(): the batch on the model is finished and everything produced
        # is committed before another worker gets these partitions.
        if self._broken:  # a delivery failed: commit nothing, the next owner redoes it
            return
        self._finish_inflight()
        revoked = {tp.partition for tp in partitions}
        self._commit(revoked)
        for p in revoked:
            self._done.pop(p, None)

    def _update_lag(self) -> None:
        try:
            for tp in self._consumer.position(self._consumer.assignment()):
                if tp.offset < 0:
                    continue
                _, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if high >= 0:
                    self.metrics.lag.labels(self.config.candidate_id,
                                            str(tp.partition)).set(max(0, high - tp.offset))
        except KafkaException as exc:
            log.debug("lag: %s", exc)
