"""The Faust app: one agent over <prefix>.requests and <prefix>.outputs runs the join.

Faust here is transport and durable state only; every decision is ``JoinCore``'s, in
``consumers.join``. The shape follows the Faust pitfalls in the design:

- no ``join``, ``&`` or ``combine`` (not implemented, or they lose events): one agent reads
  both topics, ``concurrency=1``, taking records in batches (``take_events``) that the core
  handles one after the other and then flushes once;
- the durable state is a Table, changelogged, on RocksDB (rocksdict) when it is installed, in
  memory otherwise, holding per batch, input partition and window one key with the entries
  that changed (see ``consumers.join``); it is written inside stream processing, because
  tables cannot be written from timers, and each key to the changelog partition of the input
  partition it names (``_TableView.at``): a record in the wrong one comes back after a
  restart;
- windows close in the core's own state by event-time watermark, not by Faust's windowed-table
  expiry (it never fires again for windows restored after a restart).

At least once: Faust commits offsets only after flushing the producer, so the changelog always
holds at least what the committed offsets cover; the core recognises what it sees again.

When no event arrives for ``idle_close_s`` (the traffic stopped), a timer lets event time run
on with the wall clock and emits the windows that this closes; their entries are deleted by the
next event, inside stream processing. A window emitted that way and restarted before the next
event is emitted again, with the same numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import importlib.util
import logging
import time
import weakref
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import faust
import orjson
from faust.streams import _current_event
from faust.types import TP
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from consumers.faust.sinks import RedisAlertSink
from consumers.join import JoinConfig, JoinCore, Outgoing
from consumers.merge import MergeConfig, MergeCore
from schemas import ShadowstreamError
from schemas.topics import JOIN_TABLE, MERGE_TABLE, join_app_id, join_partials, topic_name

__all__ = ["JoinAppConfig", "JoinStopped", "build_app", "run_app"]

log = logging.getLogger("shadowstream.join")



@dataclass(frozen=True)
class JoinAppConfig:
    join: JoinConfig
    data_dir: Path
    partitions: int
    """Partitions of the input topics (read from the broker): the table and its changelog
    must have as many, or Faust refuses every write."""
    web_port: int = 6066
    web_host: str = "127.0.0.1"
    idle_close_s: float = 5.0
    """Wall seconds without any event before event time is let run on with the clock."""
    replication_factor: int = 1
    """Of the app's own topics (the table's changelog)."""
    store: str | None = None
    """Faust table store URL; default rocksdb:// when rocksdict is installed, else memory://."""
    redis_url: str | None = None
    """Where alerts go (None: nowhere but /metrics)."""
    batch_records: int = 2000
    """Most records handled between two table writes (fewer when the input pauses)."""
    session_timeout_s: float = 10.0
    """How long the group waits for a silent member (a join killed with -9) before its
    partitions go to another or to its restart (Faust's default, 60 s, kept a restarted join
    idle for a minute)."""
    scale_out: bool = False
    """One of several join workers: closed windows go as parts through
    <prefix>-join-partials to the merge stage (an agent of every worker, with its own
    table), which emits whole windows and evaluates the alert rules (``consumers.merge``)."""


BATCH_WAIT_S = 0.05
"""How long a batch waits to fill: the most a record waits before the join handles it."""

ROCKSDB_OPTIONS = {"write_buffer_size": 4 * 2**20, "max_write_buffer_number": 2,
                   "block_cache_size": 16 * 2**20, "block_cache_compressed_size": 4 * 2**20}


def default_store() -> str:
    return "rocksdb://" if importlib.util.find_spec("rocksdict") else "memory://"


def build_app(prefix: str, kafka: Mapping[str, Any], config: JoinAppConfig
              ) -> tuple[faust.App, JoinCore]:
    """The Faust app and the core it drives, for the topics of ``prefix``. ``kafka``: the
    aiokafka client's arguments (``Settings.aiokafka_config``: bootstrap servers, security
    protocol, SASL, SSL context)."""

    def topic(role: str) -> str:
        return topic_name(prefix, role)

    # The app binds the current event loop as it is built: uvloop's when installed (Faust's
    # cost per record is mostly event-loop work), a fresh one for each app.
    asyncio.set_event_loop(_new_loop())
    supervisor = _Supervisor()
    app = faust.App(
        join_app_id(prefix),
        broker=[f"kafka://{b.strip()}" for b in kafka["bootstrap_servers"].split(",")],
        broker_credentials=_credentials(kafka),
        store=config.store or default_store(),
        datadir=str(config.data_dir),
        web_enabled=True,
        web_port=config.web_port,
        web_host=config.web_host,
        web_bind=config.web_host,
        topic_partitions=config.partitions,
        topic_replication_factor=config.replication_factor,
        topic_allow_declare=True,
        processing_guarantee="at_least_once",
        broker_session_timeout=config.session_timeout_s,
        broker_heartbeat_interval=min(3.0, config.session_timeout_s / 4),
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        table_standby_replicas=0,
        producer_acks=-1,
        # Table writes and our records leave through one producer: batch them, or each
        # waits on its own round trip to the broker.
        producer_linger=0.005,
        producer_max_batch_size=1 << 20,
        producer_max_request_size=4 << 20,
        producer_compression_type="lz4" if importlib.util.find_spec("lz4") else None,
    )
    # Faust stalls the agent whenever more than max_messages table writes wait to be produced;
    # at 100 (its default) that is every few events.
    app.producer.buffer.max_messages = 20_000
    topics = {role: topic(role) for role in ("pairs", "windows", "deadletter")}
    sinks = {role: app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                             value_serializer="raw") for role, name in topics.items()}
    source = app.topic(topic("requests"), topic("outputs"),
                       key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw")
    # RocksDB's defaults (64 MiB x 3 write buffers, a 2 GiB block cache) let the process
    # grow for many minutes (a soak saw +19 % in five); the table only ever holds a window
    # and its grace of entries, so small buffers and cache bound its memory.
    rocks = str(app.conf.store).startswith("rocksdb")
    table = app.Table(JOIN_TABLE, partitions=config.partitions,
                      key_type=bytes, value_type=bytes,
                      options=ROCKSDB_OPTIONS if rocks else None)
    def caught_up(topic: str, partition: int, last_read: int) -> bool:
        # Only a partition with nothing left to read may stop holding the watermark: one
        # that waits in the fetcher behind the others (a backlog after a restart) may not.
        highwater = app.consumer.highwater(TP(topic, partition))
        return highwater is not None and highwater <= last_read + 1

    join_config = replace(config.join, partition_idle_s=config.idle_close_s,
                          confirm_delivery=True, keep_unsent_alerts=bool(config.redis_url))
    merge: MergeCore | None = None
    if config.scale_out:
        join_config = replace(join_config, partials=True, rules=None,
                              keep_unsent_alerts=False)
        partials = app.topic(join_partials(prefix), partitions=config.partitions,
                             internal=True, key_type=bytes, value_type=bytes,
                             key_serializer="raw", value_serializer="raw")
        merge_table = app.Table(MERGE_TABLE, partitions=config.partitions, key_type=bytes,
                                value_type=bytes, options=ROCKSDB_OPTIONS if rocks else None)
        merge = MergeCore(MergeConfig(config.join.window_ms, config.partitions,
                                      rules=config.join.rules, confirm_delivery=True),
                          _TableView(merge_table, join_partials(prefix)))
        sinks["partials"] = partials
    core = JoinCore(join_config, _TableView(table, topic("requests")), topic("requests"),
                    topic("outputs"), caught_up)
    clock = _Clock()

    sink = None
    if config.redis_url:
        import redis

        client = redis.Redis.from_url(config.redis_url, socket_timeout=1.0,
                                      socket_connect_timeout=1.0)
        sink = RedisAlertSink(client, prefix,
                              on_done=core.alert_done if merge is None else None)

    def send(outgoing: list[Outgoing], source: JoinCore | MergeCore = core) -> None:
        alerts = []
        for o in outgoing:
            if o.role == "alerts":  # for the sinks only, in order
                alerts.append(o.record)
            elif o.role == "exemplars":
                if sink is not None:
                    doc = o.record
                    sink.record_exemplars(doc["model"], doc["candidate"], doc["window_start"],
                                          [tuple(r) for r in doc["top"]])
            else:
                if o.role == "windows" and sink is not None:
                    sink.record_window(o.record)
                callback = None
                if o.window is not None:
                    callback = functools.partial(_delivered, source, o.window)
                if o.broadcast:  # a progress marker: a copy to every merge partition
                    copies = _Copies(config.partitions, callback)
                    for mp in range(config.partitions):
                        sinks["partials"].send_soon(key=o.key, value=o.value, partition=mp,
                                                    callback=copies.delivered)
                    continue
                role = "partials" if o.role == "progress" else o.role
                sinks[role].send_soon(key=o.key, value=o.value, callback=callback)
        if alerts and sink is not None:
            sink.publish(alerts)

    inputs = {topic("requests"), topic("outputs")}

    @table.on_recover
    async def recovered() -> None:
        core.recover()
        core.assign([(tp.topic, tp.partition) for tp in app.consumer.assignment()
                     if tp.topic in inputs])
        if sink is not None:  # alerts a crash may have kept from Redis; sent once per id
            sink.publish(core.unsent_alerts())
        if merge is not None:  # windows whole but not delivered before a restart
            merge.recover()
            send(merge.complete_all(), merge)

    if merge is not None:
        @app.agent(partials, concurrency=1)
        async def merge_windows(stream: faust.StreamT) -> None:
            try:
                async for event in stream.events():
                    send(merge.handle(event.message.partition, event.message.value), merge)
            except Exception as exc:  # as the join's agent: stop with the reason
                supervisor.fail(f"merge stage: {type(exc).__name__}: {exc}")

        _ = merge_windows

    @app.agent(source, concurrency=1)
    async def join(stream: faust.StreamT) -> None:
        # Records are taken as they come, up to a batch: the table is written once per batch
        # (per input partition and window), before Faust acks the batch's offsets, so what
        # is committed is always in the changelog.
        try:
            async for events in stream.take_events(config.batch_records, within=BATCH_WAIT_S):
                clock.touch()
                for event in events:
                    msg = event.message
                    send(core.handle(msg.topic, msg.partition, msg.offset, msg.key, msg.value,
                                     flush=False))
                # Written first: a rebalance while the closing work runs (below) recovers
                # from a table that holds everything handled so far.
                send(core.flush(close=False))
                for start in core.closing():
                    # Aggregating a large window takes seconds: in a thread, on the entries
                    # taken now, so that the event loop keeps the group's heartbeats going.
                    recoveries = core.recoveries
                    prepared = await asyncio.to_thread(core.prepare, start,
                                                       core.entries_of(start))
                    if core.recoveries == recoveries:  # else stale: computed again
                        core.precomputed[start] = prepared
                send(core.close())
        except Exception as exc:  # Faust would restart the agent into the same error for ever
            supervisor.fail(f"{type(exc).__name__}: {exc}")

    @app.timer(interval=1.0)
    async def idle_close() -> None:
        send(core.forget_delivered())
        if merge is not None:
            merge.finish_delivered()
        if sink is not None:
            sink.flush()  # alerts that waited for Redis
        idle_s = clock.idle_s()
        if idle_s >= config.idle_close_s and core.windows and await read_to_the_end():
            send(core.close_idle(core.max_ts + int(idle_s * 1000)))

    async def read_to_the_end() -> bool:
        """Idle means nothing left to read, asked of the broker now. A broker that cannot be
        reached (restarting) leaves the input silent, not idle: closing windows then would
        turn the answers still to come into late events (a fault test caught that)."""
        tps = [tp for tp in app.consumer.assignment() if tp.topic in inputs]
        try:
            ends = await asyncio.wait_for(app.consumer.highwaters(*tps), timeout=2.0)
        except Exception as exc:  # the broker is away: not idle
            log.info("join: not closing idle windows, the broker does not answer (%s)", exc)
            return False
        for tp, end in ends.items():
            if core.read_to(tp.topic, tp.partition, end):
                continue
            if f"{tp.topic}:{tp.partition}" not in core.positions:
                # Nothing handled from it since it was assigned (a restart, a take-over):
                # read to the end when the consumer has nothing left to fetch there.
                position = await app.consumer.position(tp)
                if position is not None and position >= end:
                    continue
            return False
        return True

    registry = CollectorRegistry()
    registry.register(_JoinCollector(core, sink, merge))

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        # aiohttp refuses a charset inside content_type: give the media type alone.
        return web.bytes(generate_latest(registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    app.shadow_registry = registry  # type: ignore[attr-defined]
    app.shadow_supervisor = supervisor  # type: ignore[attr-defined]
    _ = (join, idle_close, recovered, metrics)
    return app, core


def _delivered(core: JoinCore | MergeCore, start: int, _fut: Any) -> None:
    core.delivered(start)


class _Copies:
    """Calls ``callback`` once every copy of a broadcast record was delivered."""

    def __init__(self, copies: int, callback: Any) -> None:
        self.left = copies
        self.callback = callback

    def delivered(self, fut: Any) -> None:
        self.left -= 1
        if self.left == 0 and self.callback is not None:
            self.callback(fut)


class _TableView(MutableMapping[str, Any]):
    """The table as the core sees it: a read finds a key whatever its partition, a write
    goes to the partition the core names with ``at``.

    Faust's table takes the partition of a write (its changelog partition, its RocksDB
    column) from the event being handled, and its RocksDB store reads only that partition.
    The core writes once per batch of records of several partitions, and reads entries of
    every partition when it closes a window.

    Keys and values are JSON, encoded here once with orjson: the table holds bytes (Faust's
    own json codec would encode a value twice, for the store and for the changelog, and
    slowly). The bytes are those Faust's json codec writes, so either reads the other's.
    """

    def __init__(self, table: Any, topic: str) -> None:
        self.table = table
        self.topic = topic

    @contextlib.contextmanager
    def at(self, partition: int) -> Iterator[None]:
        """Writes in this block go to ``partition`` (the core's input partition)."""
        event = _AtPartition(self.topic, partition)
        token = _current_event.set(weakref.ref(event))  # type: ignore[arg-type]
        try:
            yield
        finally:
            _current_event.reset(token)

    def __getitem__(self, key: str) -> Any:
        token = _current_event.set(None)
        try:
            return orjson.loads(self.table[orjson.dumps(key)])
        finally:
            _current_event.reset(token)

    def __setitem__(self, key: str, value: Any) -> None:
        self.table[orjson.dumps(key)] = orjson.dumps(value)

    def __delitem__(self, key: str) -> None:
        del self.table[orjson.dumps(key)]

    def pop(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        """Delete ``key`` if present; the old value is not read (the core never needs it)."""
        try:
            del self.table[orjson.dumps(key)]
        except KeyError:
            return default
        return None

    def __iter__(self) -> Iterator[str]:
        return (orjson.loads(k) for k in self.table)

    def __len__(self) -> int:
        return len(self.table)

    def items(self) -> Any:
        return ((orjson.loads(k), orjson.loads(v)) for k, v in self.table.items())


class _AtPartition:
    """What Faust's table reads of the current event to place a write: its message's topic
    (checked for its partition count) and partition."""

    def __init__(self, topic: str, partition: int) -> None:
        self.message = self
        self.topic = topic
        self.partition = partition


class _Clock:
    def __init__(self) -> None:
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()

    def idle_s(self) -> float:
        return time.monotonic() - self.last


class _JoinCollector(Collector):
    """Reads the core's counters at scrape time: nothing is paid per event."""

    def __init__(self, core: JoinCore, sink: RedisAlertSink | None,
                 merge: MergeCore | None = None) -> None:
        self.core = core
        self.sink = sink
        # Whole windows and alert states: the merge stage's when there is one.
        self.windows: JoinCore | MergeCore = merge if merge is not None else core

    def collect(self) -> Iterator[Any]:
        s = self.core.stats
        events = CounterMetricFamily("shadow_join_events", "Input events, by kind and outcome",
                                     labels=["kind"])
        for kind, value in (("request", s.requests), ("output", s.outputs),
                            ("duplicate", s.duplicates), ("replayed", s.replayed),
                            ("late", s.late)):
            events.add_metric([kind], value)
        yield events
        yield CounterMetricFamily("shadow_join_pairs", "DivergencePairs emitted",
                                  value=s.pairs)
        yield CounterMetricFamily("shadow_join_dead_lettered", "Records sent to dead letter",
                                  value=s.dead_lettered)
        yield CounterMetricFamily("shadow_join_windows_closed", "Windows closed",
                                  value=s.windows_closed)
        yield CounterMetricFamily("shadow_join_undefined_statistics",
                                  "Window statistics that could not be computed (left out of "
                                  "the summary, never NaN)", value=s.undefined_statistics)
        unmatched = CounterMetricFamily("shadow_join_unmatched",
                                        "Requests unmatched in closed windows, by missing side",
                                        labels=["side"])
        for side, value in sorted(s.unmatched.items()):
            unmatched.add_metric([side], value)
        yield unmatched
        yield GaugeMetricFamily("shadow_join_watermark_ms", "Event-time watermark (epoch ms)",
                                value=self.core.watermark)
        yield GaugeMetricFamily("shadow_join_input_partitions",
                                "Input partitions this worker reads (of each topic)",
                                value=len(self.core.owned_partitions()))
        if isinstance(self.windows, MergeCore):
            m = self.windows.stats
            yield CounterMetricFamily("shadow_merge_windows", "Whole windows the merge stage "
                                      "emitted (per merge partition and window)",
                                      value=m.windows)
            parts = CounterMetricFamily("shadow_merge_parts", "Parts of windows received, "
                                        "and those received again (ignored)",
                                        labels=["outcome"])
            parts.add_metric(["received"], m.parts)
            parts.add_metric(["repeated"], m.repeated)
            yield parts
            yield CounterMetricFamily("shadow_merge_ignored", "Records of the partials topic "
                                      "that could not be merged (a worker configured "
                                      "otherwise)", value=m.ignored)
        yield GaugeMetricFamily("shadow_join_open_entries", "Requests held in open windows",
                                value=sum(map(len, self.core.windows.values())))
        yield from self._windows()
        yield from self._alerts()

    def _windows(self) -> Iterator[Any]:
        gauges = {name: GaugeMetricFamily(f"shadow_window_{name}", help_, labels=["model",
                                                                                  "candidate"])
                  for name, help_ in _WINDOW_GAUGES.items()}
        for (model, cand), w in sorted(self.windows.latest.items()):
            values = {"requests": w.requests, "pairs": w.pairs, "coverage": w.coverage,
                      "disagreement_rate": w.disagreement_rate,
                      "unmatched": w.unmatched_live + w.unmatched_shadow,
                      "candidate_errors": w.candidate_errors,
                      "divergence_p99": w.divergence.get("p99"),
                      "candidate_latency_p99_ms": w.latency.candidate_p99,
                      "live_latency_p99_ms": w.latency.live_p99,
                      "drift_psi_max": max((d["psi"] for d in w.drift.values() if "psi" in d),
                                           default=None),
                      "end_ms": w.window_end,
                      "excess_disagreement_rate": (w.control.excess_disagreement_rate
                                                   if w.control is not None else None)}
            for name, value in values.items():
                if value is not None:
                    gauges[name].add_metric([model, cand], value)
        yield from gauges.values()
        drift = GaugeMetricFamily("shadow_window_drift", "Drift of the last closed window",
                                  labels=["model", "candidate", "feature", "stat"])
        for (model, cand), w in sorted(self.windows.latest.items()):
            for feature, stats in sorted(w.drift.items()):
                for stat in ("psi", "js", "ks", "wasserstein", "chi2", "p", "effect"):
                    if stat in stats:
                        drift.add_metric([model, cand, feature, stat], stats[stat])
        yield drift
        fields = GaugeMetricFamily("shadow_window_field_difference_rate",
                                   "Share of the last closed window's pairs in which a JSON "
                                   "field differed", labels=["model", "candidate", "field"])
        for (model, cand), w in sorted(self.windows.latest.items()):
            for name, value in sorted(w.divergence.items()):
                if name.startswith("mean_field:"):
                    fields.add_metric([model, cand, name.removeprefix("mean_field:")], value)
        yield fields

    def _alerts(self) -> Iterator[Any]:
        active = GaugeMetricFamily("shadow_alert_active", "1 while an alert rule is firing",
                                   labels=["model", "candidate", "rule", "severity"])
        machine = self.windows.alerts
        if machine is not None:
            for key, st in sorted(machine.states.items()):
                model, cand, rule = key.split("|", 2)
                severity = machine.severity(model, cand, rule)
                active.add_metric([model, cand, rule, severity],
                                  1.0 if st["state"] == "firing" else 0.0)
        yield active
        if self.sink is not None:
            sink = CounterMetricFamily("shadow_alerts_sent", "Alerts given to Redis, by outcome",
                                       labels=["outcome"])
            for outcome in ("delivered", "duplicates", "dropped", "failures"):
                sink.add_metric([outcome], getattr(self.sink, outcome))
            yield sink
            yield GaugeMetricFamily("shadow_alerts_outbox", "Alerts waiting for Redis",
                                    value=len(self.sink.outbox))


_WINDOW_GAUGES = {
    "requests": "Requests in the last closed window",
    "pairs": "Pairs in the last closed window",
    "coverage": "Pairs / requests in the last closed window",
    "disagreement_rate": "Disagreement rate of the last closed window",
    "unmatched": "Unmatched requests (either side) in the last closed window",
    "candidate_errors": "Candidate errors in the last closed window",
    "divergence_p99": "p99 divergence score of the last closed window",
    "candidate_latency_p99_ms": "Candidate latency p99 of the last closed window",
    "live_latency_p99_ms": "Live latency p99 of the last closed window",
    "drift_psi_max": "Largest PSI over features in the last closed window",
    "end_ms": "End of the last closed window (epoch ms)",
    "excess_disagreement_rate": "Disagreement rate of the last closed window minus its "
                                "control's (only with a control)",
}


def _credentials(kafka: Mapping[str, Any]) -> Any:
    """Faust's broker credentials from the aiokafka arguments (None for PLAINTEXT)."""
    protocol = kafka.get("security_protocol", "PLAINTEXT")
    if protocol == "PLAINTEXT":
        return None
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=kafka.get("sasl_plain_username"),
            password=kafka.get("sasl_plain_password"),
            mechanism=kafka.get("sasl_mechanism"), ssl_context=kafka.get("ssl_context"))
    return faust.SSLCredentials(kafka["ssl_context"])


class JoinStopped(ShadowstreamError):
    """The join cannot go on (its agent failed, Faust crashed): the process stops, saying why,
    instead of restarting into the same error."""


class _Supervisor:
    """Stops the whole worker with a reason the first time the join fails."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.worker: faust.Worker | None = None
        self._stopping: asyncio.Future[Any] | None = None

    def fail(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            log.error("join: stopping: %s", reason)
        if self.worker is not None and self._stopping is None:
            self._stopping = asyncio.ensure_future(self.worker.stop())


class _Worker(faust.Worker):
    """Faust's worker, keeping what failed its start (it only logs it) and without the
    terminal spinner (its cursor moves end up as escapes in logs)."""

    failure: BaseException | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spinner = None

    async def start(self) -> None:
        try:
            await super().start()
        except Exception as exc:
            self.failure = exc
            raise


_SILENT = logging.CRITICAL + 10  # above every level: the reason comes as our one line


def run_app(app: faust.App, verbose: bool = False) -> None:
    """Run until SIGTERM/SIGINT; Faust then stops the agent, flushes and commits. Raises
    JoinStopped, with the reason in one line, when the join stops on its own."""
    # The join holds many long-lived objects (entries of open windows): collect the young
    # generation less often, and never again scan what exists once the app is built.
    gc.set_threshold(50_000, 20, 100)
    gc.freeze()
    supervisor: _Supervisor = app.shadow_supervisor  # type: ignore[attr-defined]
    # Faust's and mode's own lines (timers late, rebalances, a crash's traceback) with -v;
    # the join's own (shadowstream.join) always, at its level.
    worker = _Worker(app, loglevel="INFO" if verbose else _SILENT, quiet=True,
                     redirect_stdouts=False)
    supervisor.worker = worker
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        if supervisor.reason is not None:
            raise JoinStopped(f"the join stopped: {_one_line(supervisor.reason)}") from None
        if exc.code not in (0, None):
            crash = worker.failure or worker.crash_reason
            why = f"{type(crash).__name__}: {crash}" if crash else f"exit status {exc.code}"
            raise JoinStopped(f"the join stopped: {_one_line(why)}") from None


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's, and the policy too: Faust runs its Kafka consumer in a thread of its own
    with a loop it makes itself (asyncio's default one, before the policy was set)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency, but the join works without it
        return asyncio.new_event_loop()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return asyncio.new_event_loop()


def _one_line(text: str) -> str:
    """Faust's messages run over several lines, some twice: one line, each sentence once."""
    seen: list[str] = []
    for part in (" ".join(text.split())).split(". "):
        if part and part not in seen:
            seen.append(part)
    return ". ".join(seen)
