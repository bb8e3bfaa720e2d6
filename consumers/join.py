"""The join of live and shadow answers per request, and the windows it closes. No Kafka here.

``JoinCore`` is driven one Kafka record at a time by the Faust agent in
``consumers.faust.app`` (and can be driven by a test or by replay with a plain dict as its
table); a record carries one
event or a batch of events of its partition. It returns what to send; it never sends. It keeps
one *entry* per in-flight request in memory, and its only durable state is ``table``, which
the Faust app backs with a changelogged Table: per record, one key per window the record
touched (``~e:<partition>:<window>:<seq>``) holding the entries it changed, so a batch of
events costs one changelog record, not one per event; plus a few ``~`` keys (closed windows,
alert states, the reference). A restarted app replays the deltas in order, finds the same
entries and closes the same windows with the same numbers.

An entry per in-flight request, keyed by model and request id: its format, typed and
versioned, and the table's keys are in ``consumers.entries``.

Time is event time. Each input partition's progress is the greatest ``ts`` read from it; the
watermark is the least progress of the partitions still active (an event within the last
``partition_idle_s`` wall seconds), so a partition read behind the others (a backlog, a slow
worker's outputs) holds windows open instead of making its events late. With every partition
idle it is the greatest ``ts`` seen. A window ``[s, s+size)`` closes
when the watermark reaches ``s + size + grace``: then every entry of the window is final (a
missing side is *unmatched*), its summaries are emitted and its entries deleted. An event for a
window that has closed is either a replay after a restart (its offset is at or below the offset
recorded when the window closed: ignored) or late (dead letter, counted).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from consumers.alerting import AlertMachine
from consumers.closing import WindowClosing
from consumers.compare import ComparisonError, Tolerances, compare
from consumers.drift import Profile
from consumers.entries import (
    ALERTS_KEY,
    DEAD_KEY,
    DELTA_KEY,
    ENTRY_VERSION,
    FORMAT_KEY,
    META_KEY,
    OUTBOX_KEY,
    PROFILE_KEY,
    Entry,
    Outgoing,
    Role,
    check_format,
    drop_at,
    entry_key,
    put_at,
)
from consumers.rules import RuleSet
from consumers.windows import (
    output_features,
    request_features,
    top1_as_live,
    window_start,
)
from schemas import Alert, ContractError, DivergencePair, WindowSummary
from schemas.builders import dead_letter
from schemas.codec import as_output, as_request, encode_batch, events_of

__all__ = ["JoinConfig", "JoinCore", "JoinStats", "Outgoing", "Role", "entry_key"]

log = logging.getLogger("shadowstream.join")

RECORD_EVENTS = 500
"""Most entries in one table delta, and pairs in one pairs record: at a few hundred bytes
each, well under the producer's largest request (4 MiB) whatever the input rate."""


@dataclass(frozen=True)
class JoinConfig:
    window_ms: int = 60_000
    """Size of the tumbling event-time windows."""
    grace_ms: int = 10_000
    """How long (event time) after a window ends its stragglers are waited for: the TTL of
    an unmatched side. Keep it above the time a worker may lag behind the requests."""
    reference_size: int = 1000
    """Requests per model that make the drift reference, when no profile file is given."""
    profiles: Mapping[str, Profile] = field(default_factory=dict)
    """Reference profiles per model from ``shadow profile build`` (override reference_size)."""
    candidates: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Candidates expected per model; others are learned from the outputs they send."""
    tolerances: Tolerances = field(default_factory=Tolerances)
    rules: RuleSet | None = None
    """Alert rules evaluated on each closed window (None: no alerting)."""
    max_event_bytes: int = 1 << 20
    """A record of one event larger than this is dead-lettered unread."""
    max_record_bytes: int = 64 << 20
    """A batch record larger than this is dead-lettered unread."""
    confirm_delivery: bool = False
    """Forget a closed window only after ``delivered`` was called for each of its summaries
    (the Faust app does; a plain caller's sends are synchronous)."""
    partition_idle_s: float = 5.0
    """A partition with no event for this long (wall clock) stops holding the watermark."""
    keep_unsent_alerts: bool = False
    """Keep alerts in the table until ``alert_done`` says they reached their sink, so that a
    crash while the sink is down loses none (the Faust app with Redis does)."""
    partials: bool = False
    """One of several join workers: a closed window leaves as one part per input partition
    (role "partials", see ``consumers.merge``) and a progress marker per partition (role
    "progress"), for the merge stage to emit whole windows and evaluate the alert rules;
    windows close per input partition. ``rules`` are then the merge stage's."""


@dataclass
class JoinStats:
    requests: int = 0
    outputs: int = 0
    pairs: int = 0
    duplicates: int = 0
    replayed: int = 0
    late: int = 0
    dead_lettered: int = 0
    windows_closed: int = 0
    undefined_statistics: int = 0
    """Statistics of closed windows that could not be computed (left out, never NaN)."""
    unmatched: dict[str, int] = field(default_factory=lambda: {"live": 0, "shadow": 0})


class JoinCore(WindowClosing):
    def __init__(self, config: JoinConfig, table: MutableMapping[str, Any],
                 requests_topic: str, outputs_topic: str,
                 caught_up: Callable[[str, int, int], bool] | None = None,
                 clock: Callable[[], int] | None = None) -> None:
        """``caught_up(topic, partition, last_offset_read)`` says whether a partition has
        nothing more to read now; only such a partition may go idle (default: any may).
        ``clock`` gives the ``ts`` of what the core writes (default: wall clock, epoch ms;
        replay passes a fixed one so that its report is the same bytes every time)."""
        self.config = config
        self._window_ms = config.window_ms
        self.table = table
        self.requests_topic, self.outputs_topic = requests_topic, outputs_topic
        self.caught_up = caught_up
        self.clock = clock or (lambda: time.time_ns() // 1_000_000)
        self.stats = JoinStats()
        self.max_ts = 0  # the greatest event time seen on any partition
        self._progress: dict[str, int] = {}  # "topic:partition" -> greatest ts read there
        self._last_seen: dict[str, float] = {}  # "topic:partition" -> monotonic time
        self.closed_before = 0  # windows starting before this have closed
        # With partials, per input partition (a partition taken over from another worker
        # may be behind this one's own).
        self._closed_at: dict[int, int] = {}
        self.closed_offsets: dict[str, int] = {}  # "topic:partition" -> offset at close
        self.positions: dict[str, int] = {}  # "topic:partition" -> last offset handled
        self.entries: dict[str, Entry] = {}  # entry key -> entry (consumers.entries)
        self.windows: dict[int, set[str]] = defaultdict(set)  # window start -> entry keys
        # The table holds entries as deltas: what one record changed in one window, under
        # ~e:<partition>:<window start>:<seq> (see _flush). Keys per window, to delete them.
        self._deltas: dict[int, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
        self._seq = 0
        # Entries changed since the last flush, by the input partition of the record that
        # changed them (its deltas are written from that partition).
        self._dirty: dict[int, dict[str, Entry]] = defaultdict(dict)
        self._formatted: set[int] = set()  # partitions whose format key was written
        # A table with ``at(partition)`` (the Faust app's) is written from an explicit input
        # partition: flushes and deletions need not wait for a record of that partition.
        self._at: Callable[[int], Any] | None = getattr(table, "at", None)
        self._pairs: dict[int, list[dict[str, Any]]] = defaultdict(list)  # to send at flush
        self._legacy: dict[int, dict[str, Any]] = defaultdict(dict)  # see recover()
        self.candidates: dict[str, set[str]] = defaultdict(set)
        for model, cands in config.candidates.items():
            self.candidates[model].update(cands)
        self.profiles: dict[str, Profile] = dict(config.profiles)
        self._reference: dict[str, list[dict[str, float | str]]] = defaultdict(list)
        # Windows emitted, not yet forgotten: start -> summaries not yet delivered. A window
        # is recorded as closed (in the table) only once its summaries are delivered, so a
        # crash in between emits it again instead of losing it.
        self._emitted: dict[int, int] = {}
        # Delta keys of closed windows, by input partition, deleted while a record of that
        # partition is handled: a table key must always be written from its own partition
        # (Faust sends the changelog record to the current event's partition).
        self._doomed: dict[int, list[str]] = defaultdict(list)
        self._summaries: dict[int, list[WindowSummary]] = {}  # emitted, not yet forgotten
        self.latest: dict[tuple[str, str], WindowSummary] = {}  # last closed, per pair
        self.alerts = AlertMachine(config.rules) if config.rules is not None else None
        self._partition = 0  # the partition of the event being handled
        self._open_from = 0  # windows before this are closed for that partition
        # Alerts not yet acknowledged by the sink: evaluated but not persisted (_fresh; a
        # crash re-evaluates them from the persisted states), and persisted per partition
        # with the states that produced them (_unsent; rewritten from that partition only).
        self._fresh: dict[str, Alert] = {}
        self._unsent: dict[int, dict[str, Any]] = defaultdict(dict)
        self._outbox_dirty: set[int] = set()
        # Closing work done ahead by the caller (``prepare``), by window start.
        self.precomputed: dict[int, Any] = {}
        self.recoveries = 0  # how many times the state was rebuilt from the table

    # -- recovery ----------------------------------------------------------------------------

    def recover(self) -> None:
        """Rebuild the in-memory indexes from the table (after a restart or a rebalance)."""
        self.windows.clear()
        self.entries.clear()
        self._deltas.clear()
        self._legacy.clear()
        self._doomed.clear()
        self._unsent.clear()
        self._closed_at.clear()
        self.precomputed.clear()
        self.recoveries += 1
        if self.config.partials:
            # Windows emitted here but not yet forgotten may now hold entries of partitions
            # taken over from another worker: closed again (the partitions closed here
            # before, and recorded so, are skipped; the merge stage ignores a part twice).
            self._emitted.clear()
        items = list(self.table.items())
        for key, meta in items:
            if key.startswith(META_KEY):  # one per partition; closing only moves forward
                self.closed_before = max(self.closed_before, meta["closed_before"])
                p = int(key.removeprefix(META_KEY))
                self._closed_at[p] = max(self._closed_at.get(p, 0), meta["closed_before"])
                for tp, offset in meta["offsets"].items():
                    self.closed_offsets[tp] = max(offset, self.closed_offsets.get(tp, -1))
            elif key.startswith(FORMAT_KEY):
                check_format(key, meta)
            elif key.startswith(OUTBOX_KEY) and self.config.keep_unsent_alerts:
                self._unsent[int(key.removeprefix(OUTBOX_KEY))] = {
                    doc["alert_id"]: doc for doc in meta}
            elif key.startswith(ALERTS_KEY) and self.alerts is not None:
                for rule_key, st in meta.items():  # the newest state of each rule wins
                    known = self.alerts.states.get(rule_key)
                    if known is None or st["last_window"] > known["last_window"]:
                        self.alerts.states[rule_key] = st
        deltas = []
        for key, value in items:
            if key.startswith(PROFILE_KEY):
                self.profiles.setdefault(key.removeprefix(PROFILE_KEY),
                                         Profile.from_dict(value))
            elif key.startswith(DELTA_KEY):
                partition, start, seq = map(int, key.removeprefix(DELTA_KEY).split(":"))
                deltas.append((seq, partition, start, key, value))
            elif not key.startswith("~") and isinstance(value, dict) and "ts" in value:
                # An entry of the version that wrote one key per request: taken in, and
                # written again as a delta of its own partition (its old key deleted).
                ekey = key if "\x1f" in key else entry_key(value["m"], key)
                self._legacy[value["p"]][ekey] = value
                self._doomed[value["p"]].append(key)
        for entries in self._legacy.values():
            for ekey, entry in entries.items():
                self.entries[ekey] = entry
                self.windows[window_start(entry["ts"], self.config.window_ms)].add(ekey)
                self.candidates[entry["m"]].update(entry.get("c", {}))
        for seq, partition, start, key, value in sorted(deltas):
            self._seq = max(self._seq, seq)
            if start < self._closed_for(partition):  # closed before its deletion was written
                self._doomed[partition].append(key)
                continue
            self._deltas[start][partition].append(key)
            for ekey, entry in value.items():  # later deltas hold the newer entry
                self.entries[ekey] = entry
                self.windows[start].add(ekey)
                self.max_ts = max(self.max_ts, entry["ts"])
                self.candidates[entry["m"]].update(entry.get("c", {}))
        log.info("join: recovered %d entries in %d open windows, watermark %d",
                 sum(map(len, self.windows.values())), len(self.windows), self.max_ts)

    # -- events ------------------------------------------------------------------------------

    def handle(self, topic: str, partition: int, offset: int, key: bytes | None,
               value: bytes | None, seen: list[dict[str, Any]] | None = None,
               flush: bool = True) -> list[Outgoing]:
        """Process one record of either input topic, of one event or a batch (all of this
        partition); returns what to send. Each valid request is appended to ``seen`` when
        given (replay answers them). With ``flush=False`` the table is not written and no
        window closes until ``flush()``: a caller handling many records at once writes their
        changes once (before it commits their offsets)."""
        out: list[Outgoing] = []
        self._partition = partition
        if partition in self._outbox_dirty:
            self._write_outbox()
        for start in sorted(s for s, pending in self._emitted.items() if pending <= 0):
            del self._emitted[start]
            self.forget(start, out)
        for doomed in self._doomed.pop(partition, ()):
            self._drop(partition, doomed)
        self._dirty[partition].update(self._legacy.pop(partition, {}))
        tp = f"{topic}:{partition}"
        data = value or b""
        is_request = topic == self.requests_topic
        events: list[Any] = []
        batched = False
        try:
            if len(data) > self.config.max_record_bytes:
                raise ContractError(f"record of {len(data)} bytes is over the limit of "
                                    f"{self.config.max_record_bytes}")
            events, batched = events_of(data)
            if not batched and len(data) > self.config.max_event_bytes:
                raise ContractError(f"event of {len(data)} bytes is over the limit of "
                                    f"{self.config.max_event_bytes}")
        except ContractError as exc:
            events = []
            self._dead_event(exc, [topic, partition, offset], key, data, out)
        pairs = self._pairs[partition]
        # Per record, not per event: the windows open here, and the progress (below).
        self._open_from = self._closed_for(partition)
        latest = -1
        for i, doc in enumerate(events):
            src = [topic, partition, offset, i] if batched else [topic, partition, offset]
            try:
                if is_request:
                    event = as_request(doc)
                    if seen is not None:
                        seen.append(event)
                    self._on_request(event, src, out, pairs)
                else:
                    event = as_output(doc)
                    self._on_output(event, src, out, pairs)
                if event["ts"] > latest:
                    latest = event["ts"]
            except ContractError as exc:
                raw = orjson.dumps(doc) if batched else data
                self._dead_event(exc, src, key, raw, out, doc)
        if latest >= 0:
            self._advance(tp, latest)
        self.positions[tp] = offset
        if flush:
            out.extend(self.flush())
        return out

    def flush(self, close: bool = True) -> list[Outgoing]:
        """Write what the records handled since the last flush changed, then (unless not
        ``close``: see ``close``) close the windows the watermark has passed; returns what
        to send."""
        out: list[Outgoing] = []
        for all_pairs in self._pairs.values():
            # One record for the pairs of each input partition: a batch when there are
            # several (a pair record costs the join as much as joining it), of at most
            # RECORD_EVENTS (a Kafka record has a size limit).
            for i in range(0, len(all_pairs), RECORD_EVENTS):
                pairs = all_pairs[i:i + RECORD_EVENTS]
                if len(pairs) == 1:
                    out.append(Outgoing(Role.PAIRS, pairs[0]["request_id"].encode(),
                                        orjson.dumps(pairs[0]), record=pairs[0]))
                else:
                    out.append(Outgoing(Role.PAIRS, pairs[0]["request_id"].encode(),
                                        encode_batch(pairs), record=list(pairs)))
        self._pairs.clear()
        self._write_deltas()
        if close:
            self.sweep(self.watermark, out)
        return out

    def close(self) -> list[Outgoing]:
        """Close the windows the watermark has passed (after ``flush(close=False)``)."""
        out: list[Outgoing] = []
        self.sweep(self.watermark, out)
        return out

    def _write_deltas(self) -> None:
        """Per input partition and window, one table key with the entries changed (one
        changelog record per flush, partition and window, not one per event), written from
        that partition under a key that names it."""
        size = self.config.window_ms
        for partition, dirty in self._dirty.items():
            if partition not in self._formatted:  # the entries' format, before any entry
                self._put(partition, f"{FORMAT_KEY}{partition}",
                          {"entry_version": ENTRY_VERSION})
                self._formatted.add(partition)
            by_window: dict[int, dict[str, Any]] = defaultdict(dict)
            for ekey, entry in dirty.items():
                by_window[window_start(entry["ts"], size)][ekey] = entry
            for start, changed in by_window.items():
                items = list(changed.items())
                for i in range(0, len(items), RECORD_EVENTS):  # a record has a size limit
                    self._seq += 1
                    dkey = f"{DELTA_KEY}{partition}:{start}:{self._seq}"
                    self._put(partition, dkey, dict(items[i:i + RECORD_EVENTS]))
                    self._deltas[start][partition].append(dkey)
        self._dirty.clear()

    def _put(self, partition: int, key: str, value: Any) -> None:
        put_at(self.table, partition, key, value)

    def _drop(self, partition: int, key: str) -> None:
        drop_at(self.table, partition, key)

    def assign(self, partitions: list[tuple[str, int]]) -> None:
        """The input partitions this app reads (after a rebalance). Until one has sent an
        event or been idle for ``partition_idle_s``, it holds the watermark back."""
        now = time.monotonic()
        wanted = {f"{t}:{p}" for t, p in partitions}
        for tp in list(self._progress):
            if tp not in wanted:
                del self._progress[tp], self._last_seen[tp]
        for tp in wanted - set(self._progress):
            self._progress[tp] = 0
            self._last_seen[tp] = now
        log.info("join: reading %d partitions: %s", len(wanted), ", ".join(sorted(wanted)))

    @property
    def watermark(self) -> int:
        """The least progress of the active partitions (see the module docstring)."""
        now = time.monotonic()
        idle = self.config.partition_idle_s
        active = [ts for tp, ts in self._progress.items()
                  if now - self._last_seen[tp] < idle or not self._drained(tp)]
        return min(active) if active else self.max_ts

    def _drained(self, tp: str) -> bool:
        if self.caught_up is None:
            return True
        topic, _, partition = tp.rpartition(":")
        return self.caught_up(topic, int(partition), self.positions.get(tp, -1))

    def _advance(self, tp: str, ts: int) -> None:
        self._last_seen[tp] = time.monotonic()
        if ts > self._progress.get(tp, -1):
            self._progress[tp] = ts
        if ts > self.max_ts:
            self.max_ts = ts

    def _on_request(self, r: dict[str, Any], src: list[Any], out: list[Outgoing],
                    pairs: list[dict[str, Any]]) -> None:
        """A valid request document (``as_request``)."""
        self.stats.requests += 1
        rid, model, ts = r["request_id"], r["model"], r["ts"]
        if ts - ts % self._window_ms < self._open_from and self._closed(ts, src, rid, model,
                                                                         out):
            return
        key = entry_key(model, rid)
        entry = self.entries.get(key) or {"m": model, "ts": ts, "p": src[1], "c": {}}
        live = entry.get("live")
        if live is not None:
            if live["src"] == src:  # the same event again, after a restart: resend its pairs
                self.stats.replayed += 1
                self._resend(rid, entry, pairs)
            else:
                self.stats.duplicates += 1
            return
        answer = r["live"]
        output = answer.get("output")
        features = request_features(r["inputs"], output)
        entry["live"] = {"lat": answer["latency_ms"], "err": answer.get("error"), "o": output,
                         "f": features, "src": src}
        entry["ts"] = ts  # the request's time is authoritative for its window
        entry["m"] = model
        attrs = r.get("attrs")
        if attrs and attrs.get("segment"):
            entry["seg"] = attrs["segment"]
        for cand, cand_answer in entry["c"].items():
            if "r" not in cand_answer and "dl" not in cand_answer:  # it came before the request
                self._pair(rid, entry, cand, cand_answer, out, pairs)
        self._store(key, entry)
        if model not in self.profiles:
            self._learn_reference(model, features)

    def _on_output(self, o: dict[str, Any], src: list[Any], out: list[Outgoing],
                   pairs: list[dict[str, Any]]) -> None:
        """A valid output document (``as_output``)."""
        self.stats.outputs += 1
        rid, model, ts, cand = o["request_id"], o["model"], o["ts"], o["candidate"]
        if ts - ts % self._window_ms < self._open_from and self._closed(ts, src, rid, model,
                                                                         out):
            return
        self.candidates[model].add(cand)
        key = entry_key(model, rid)
        entry = self.entries.get(key) or {"m": model, "ts": ts, "p": src[1], "c": {}}
        known = entry["c"].get(cand)
        if known is not None:
            if known["src"] == src:
                self.stats.replayed += 1
                self._resend(rid, entry, pairs)
            else:  # the worker answered twice (at-least-once): the first answer counts
                self.stats.duplicates += 1
            return
        output = o.get("output")
        answer: dict[str, Any] = {"lat": o["latency_ms"], "err": o.get("error"), "src": src,
                                  "f": output_features(output, "candidate")}
        if output is not None:
            answer["o"] = output
        entry["c"][cand] = answer
        if "live" in entry:
            self._pair(rid, entry, cand, answer, out, pairs)
        self._store(key, entry)

    def _store(self, key: str, entry: dict[str, Any]) -> None:
        self.entries[key] = entry
        self._dirty[self._partition][key] = entry
        ts = entry["ts"]
        self.windows[ts - ts % self._window_ms].add(key)

    def _closed(self, ts: int, src: list[Any], request_id: str | None, model: str | None,
                out: list[Outgoing]) -> bool:
        """True when the event's window has closed (replayed or late: not joined)."""
        closed_before = self._closed_for(src[1])
        if window_start(ts, self.config.window_ms) >= closed_before:
            return False
        if src[2] <= self.closed_offsets.get(f"{src[0]}:{src[1]}", -1):
            self.stats.replayed += 1
        else:
            self.stats.late += 1
            self.stats.dead_lettered += 1
            out.append(self._dead_letter("join", "late: its window has closed", src, None,
                                         None, request_id, model,
                                         detail=f"event time {ts}, windows before "
                                                f"{closed_before} are closed"))
        return True

    def _closed_for(self, partition: int) -> int:
        """Windows starting before this are closed for that input partition."""
        if self.config.partials:
            return self._closed_at.get(partition, 0)
        return self.closed_before

    # -- pairs -------------------------------------------------------------------------------

    def _pair(self, request_id: str, entry: dict[str, Any], cand: str, answer: dict[str, Any],
              out: list[Outgoing], pairs: list[dict[str, Any]]) -> None:
        live = entry["live"]
        cand_output = answer.pop("o", None)
        if live["o"] is not None and cand_output is not None:
            try:
                c = compare(live["o"], cand_output,
                            self.config.tolerances.for_model(entry["m"]))
            except ComparisonError as exc:
                answer["dl"] = str(exc)
                self.stats.dead_lettered += 1
                out.append(self._dead_letter(
                    "join", str(exc), answer["src"], request_id.encode(), None, request_id,
                    entry["m"], detail=f"candidate {cand}"))
                return
            answer["r"] = {"k": c.kind, "s": c.score, "d": c.disagree, "m": c.metrics}
            top1 = top1_as_live(live["o"], cand_output)
            if top1 is not None and "candidate.top1" in answer.get("f", {}):
                answer["f"]["candidate.top1"] = top1  # judged in the live answer's terms
        else:
            answer["r"] = None  # an error on either side: a pair, not a comparison
        self.stats.pairs += 1
        pairs.append(self._pair_doc(request_id, entry, cand, answer))

    def _resend(self, request_id: str, entry: dict[str, Any],
                pairs: list[dict[str, Any]]) -> None:
        if "live" not in entry:
            return
        for cand, answer in sorted(entry["c"].items()):
            if "r" in answer:
                pairs.append(self._pair_doc(request_id, entry, cand, answer))

    @staticmethod
    def _pair_doc(request_id: str, entry: dict[str, Any], cand: str,
                  answer: dict[str, Any]) -> dict[str, Any]:
        live, r = entry["live"], answer["r"]
        doc: dict[str, Any] = {
            "schema": DivergencePair.SCHEMA, "request_id": request_id, "model": entry["m"],
            "ts": entry["ts"], "candidate": cand, "disagree": bool(r and r["d"]),
            "live_latency_ms": live["lat"], "candidate_latency_ms": answer["lat"]}
        if r:
            doc["kind"], doc["score"], doc["metrics"] = r["k"], r["s"], r["m"]
        # Unrolled, as the rest: this runs for every pair.
        if (segment := entry.get("seg")) is not None:
            doc["segment"] = segment
        if live["err"] is not None:
            doc["live_error"] = live["err"]
        if (error := answer.get("err")) is not None:
            doc["candidate_error"] = error
        return doc

    # -- the drift reference -----------------------------------------------------------------

    def _learn_reference(self, model: str, features: dict[str, float | str]) -> None:
        if model in self.profiles:
            return
        rows = self._reference[model]
        rows.append(features)
        if len(rows) >= self.config.reference_size:
            profile = Profile.build(rows, source=f"first {len(rows)} requests")
            self.profiles[model] = profile
            self._put(self._partition, PROFILE_KEY + model, profile.to_dict())
            del self._reference[model]
            log.info("join: drift reference of %s built from %d requests", model, len(rows))

    # -- dead letters ------------------------------------------------------------------------

    def _dead_event(self, exc: ContractError, src: list[Any], key: bytes | None, data: bytes,
                    out: list[Outgoing], doc: Any = None) -> None:
        """An input event (or record) that cannot be decoded: a dead letter, and counted in
        its window when its model and time can still be read. ``doc``: the event as parsed
        from a batch (whose record key is another event's)."""
        self.stats.dead_lettered += 1
        envelope = _readable(doc) if doc is not None else _envelope(data)
        in_batch = len(src) > 3
        request_id = envelope.get("request_id") if in_batch or not key else \
            key.decode("utf-8", "replace")
        if in_batch:
            key = request_id.encode() if request_id else None
        model, ts = envelope.get("model"), envelope.get("ts")
        if ts is not None:
            self._advance(f"{src[0]}:{src[1]}", ts)
        out.append(self._dead_letter(exc.stage, str(exc), src, key, data, request_id, model,
                                     detail=exc.path))
        if src[0] != self.requests_topic or model is None or ts is None:
            return  # cannot be placed in a window: counted in the stats and metrics only
        if window_start(ts, self.config.window_ms) < self._closed_for(src[1]):
            self.stats.late += 1
            return
        # Keyed by request id when there is one, so a candidate's answer to it (if any) joins
        # this entry instead of counting as a second request.
        table_key = entry_key(model, request_id) if request_id \
            else f"{DEAD_KEY}{':'.join(map(str, src))}"
        entry = self.entries.get(table_key) or {"m": model, "ts": ts, "p": src[1], "c": {}}
        entry["dl"] = str(exc)[:200]
        self._store(table_key, entry)

    def _dead_letter(self, stage: str, reason: str, src: list[Any], key: bytes | None,
                     data: bytes | None, request_id: str | None, model: str | None,
                     detail: str = "") -> Outgoing:
        doc = dead_letter(stage, reason, ts=self.clock(), source=src, key=key, value=data,
                          request_id=request_id, model=model, detail=detail)
        return Outgoing(Role.DEADLETTER, key, orjson.dumps(doc), record=doc)


def _envelope(data: bytes) -> dict[str, Any]:
    """What can still be read of a broken event: request_id, model and ts when well typed."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return _readable(doc)


def _readable(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict):
        return {}
    out: dict[str, Any] = {}
    for name, typ in (("request_id", str), ("model", str), ("ts", int)):
        v = doc.get(name)
        if isinstance(v, typ) and not isinstance(v, bool) and (typ is str or v >= 0):
            out[name] = v
    return out

