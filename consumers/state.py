"""What the join remembers, and how it is made durable and rebuilt. No Kafka here.

``JoinState`` holds the in-flight entries (``consumers.entries``), the windows they fall in,
each input partition's progress in event time (the watermark), and the deltas written to the
table; ``recover`` rebuilds all of it from the table after a restart or a rebalance.
``consumers.closing.WindowClosing`` builds on it to close windows, and ``consumers.join.JoinCore``
to take events in.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from consumers.alerting import AlertMachine
from consumers.compare import Tolerances
from consumers.drift import Profile
from consumers.entries import (
    ALERTS_KEY,
    DELTA_KEY,
    ENTRY_VERSION,
    FORMAT_KEY,
    META_KEY,
    OUTBOX_KEY,
    PROFILE_KEY,
    Entry,
    check_format,
    drop_at,
    entry_key,
    put_at,
)
from consumers.rules import RuleSet
from consumers.windows import window_start
from schemas import Alert, WindowSummary

__all__ = ["RECORD_EVENTS", "JoinConfig", "JoinState", "JoinStats"]

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


class JoinState:
    """The join's state (see the module docstring); ``JoinCore`` is the class to use."""

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

    # -- durable writes and event time -----------------------------------------------------

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

    def _closed_for(self, partition: int) -> int:
        """Windows starting before this are closed for that input partition."""
        if self.config.partials:
            return self._closed_at.get(partition, 0)
        return self.closed_before
