"""The merge stage: whole windows from the parts several join workers close. No Kafka here.

With several join workers (``shadow join --scale-out``) each reads some input partitions and
closes windows on its own; ``JoinCore`` with ``partials`` then sends, per closed window, one
*part* per input partition, model and candidate (mergeable aggregates: counts, sketches,
histograms; its ten most divergent requests; the drift reference it binned against), keyed by
model (so that a model's control and candidates meet in one merge partition), and one
*progress* marker per input partition (windows before ``closed_before`` are closed there) to
every partition of ``<prefix>-join-partials``.

``MergeCore`` runs per partition of that topic (a *merge partition*; the Faust app gives each
worker some). A window is whole when every input partition's progress has passed it: a part is
sent before its partition's marker, through the same producer to the same topic partition, so
by then every part of the window is in. It then merges the parts (in partition order, so the
numbers are the same bytes whatever the arrival order), emits one summary per model, candidate
and segment, and evaluates the alert rules on it, once per window.

At least once: a part sent again (a worker restarted, or one that took over a partition, closes
the window again) is ignored: the first part of a partition is final (every entry of that
partition was in it). Parts and markers live in the table until the window's summaries were
delivered; a crash before that emits the window again, from the same parts and the same alert
states (the same alert ids, which the sink delivers once).
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson

from consumers.alerting import AlertMachine
from consumers.closing import PART_SCHEMA, PROGRESS_SCHEMA
from consumers.drift import Profile
from consumers.entries import Outgoing, Role, drop_at, put_at
from consumers.rules import RuleSet
from consumers.windows import WindowAggregate, WindowKey, with_controls
from schemas import ShadowstreamError, WindowSummary, encode

__all__ = ["MergeConfig", "MergeCore", "MergeError", "MergeStats", "check_peers"]

log = logging.getLogger("shadowstream.join")

SEP = "\x1f"
PART_KEY = "~part" + SEP  # + merge partition, window start, input partition, model, candidate
PROGRESS_KEY = "~progress" + SEP  # + merge partition: {input partition: closed_before}
DONE_KEY = "~done" + SEP  # + merge partition: windows emitted before, alert states


class MergeError(ShadowstreamError):
    """Parts that cannot be merged: workers configured differently (window size, input
    partitions). The join stops, saying which."""


@dataclass(frozen=True)
class MergeConfig:
    window_ms: int
    partitions: int
    """Input partitions: a window is whole once each of them has closed it."""
    rules: RuleSet | None = None
    confirm_delivery: bool = False
    """Forget a window only after ``delivered`` was called for each summary (the app)."""
    exemplars: int = 10


@dataclass
class MergeStats:
    parts: int = 0
    progress: int = 0
    repeated: int = 0
    """Parts received again (restarts, take-overs): ignored."""
    windows: int = 0
    """Whole windows emitted (per merge partition and window start)."""
    undefined_statistics: int = 0
    ignored: int = 0
    """Records that could not be merged (another worker's window size or partitions)."""


class MergeCore:
    def __init__(self, config: MergeConfig, table: MutableMapping[str, Any],
                 clock: Callable[[], int] | None = None) -> None:
        self.config = config
        self.table = table
        self.clock = clock or (lambda: time.time_ns() // 1_000_000)
        self.stats = MergeStats()
        self.alerts = AlertMachine(config.rules) if config.rules is not None else None
        self.latest: dict[tuple[str, str], WindowSummary] = {}
        # merge partition -> window start -> (model, candidate) -> input partition -> part
        self.parts: dict[int, dict[int, dict[tuple[str, str], dict[int, dict[str, Any]]]]] = \
            defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
        self.progress: dict[int, dict[int, int]] = defaultdict(dict)
        self.done_before: dict[int, int] = {}
        self._keys: dict[int, set[tuple[str, str]]] = defaultdict(set)  # per merge partition
        self._pending: dict[int, int] = {}  # window start -> summaries not yet delivered
        self._emitted_in: dict[int, set[int]] = defaultdict(set)  # start -> merge partitions
        self._warned_at = -math.inf

    # -- recovery ----------------------------------------------------------------------------

    def recover(self) -> None:
        """Rebuild from the table (after a restart or a rebalance): parts, progress, what was
        emitted, alert states (the newest of each rule)."""
        self.parts.clear()
        self.progress.clear()
        self.done_before.clear()
        self._keys.clear()
        self._pending.clear()
        self._emitted_in.clear()
        for key, value in list(self.table.items()):
            if key.startswith(PART_KEY):
                mp, start, p, model, cand = key.removeprefix(PART_KEY).split(SEP)
                self.parts[int(mp)][int(start)][(model, cand)][int(p)] = value
                self._keys[int(mp)].add((model, cand))
            elif key.startswith(PROGRESS_KEY):
                mp = int(key.removeprefix(PROGRESS_KEY))
                self.progress[mp] = {int(p): cb for p, cb in value.items()}
            elif key.startswith(DONE_KEY):
                mp = int(key.removeprefix(DONE_KEY))
                self.done_before[mp] = value["done_before"]
                if self.alerts is not None:
                    for rule_key, st in value["alerts"].items():
                        known = self.alerts.states.get(rule_key)
                        if known is None or st["last_window"] > known["last_window"]:
                            self.alerts.states[rule_key] = st
        log.info("merge: recovered %d windows awaiting parts",
                 sum(len(w) for w in self.parts.values()))

    # -- records -----------------------------------------------------------------------------

    def handle(self, partition: int, value: bytes) -> list[Outgoing]:
        """One record of the partials topic's ``partition`` (a part or a progress marker);
        returns what to send: the windows it completes, their exemplars and alerts. A record
        this worker cannot merge (from a worker configured otherwise: ``shadow join`` refuses
        to start one, see ``check_peers``) is ignored, counted and logged, so that one
        misconfigured worker cannot stop the others."""
        out: list[Outgoing] = []
        self.finish_delivered()
        try:
            doc = orjson.loads(value)
            schema = doc.get("schema") if isinstance(doc, dict) else None
            if schema not in (PART_SCHEMA, PROGRESS_SCHEMA):
                raise MergeError(f"not a part or a progress marker: schema {schema!r}")
            self._check(doc)
        except (orjson.JSONDecodeError, MergeError) as exc:
            self.stats.ignored += 1
            if time.monotonic() - self._warned_at > 60:
                self._warned_at = time.monotonic()
                log.warning("merge: ignored a record of merge partition %d (%d so far): %s",
                            partition, self.stats.ignored, exc)
            return out
        if schema == PART_SCHEMA:
            self._on_part(partition, doc)
        else:
            self._on_progress(partition, doc)
        self.complete(partition, out)
        return out

    def _check(self, doc: dict[str, Any]) -> None:
        window_ms = doc.get("window_ms", self.config.window_ms)
        if window_ms != self.config.window_ms:
            raise MergeError(f"a join worker closes windows of {window_ms} ms, this one "
                             f"{self.config.window_ms} ms: start every worker with the same "
                             "--window-s")
        p = doc.get("partition")
        if not isinstance(p, int) or not 0 <= p < self.config.partitions:
            raise MergeError(f"a record of input partition {p!r}, the inputs have "
                             f"{self.config.partitions}: a worker of other topics?")

    def _on_part(self, mp: int, doc: dict[str, Any]) -> None:
        start, p = doc["window_start"], doc["partition"]
        self.stats.parts += 1
        key = (doc["model"], doc["candidate"])
        if start < self.done_before.get(mp, 0) or p in self.parts[mp][start][key]:
            self.stats.repeated += 1
            return
        self.parts[mp][start][key][p] = doc
        self._keys[mp].add(key)
        self._put(mp, f"{PART_KEY}{mp}{SEP}{start}{SEP}{p}{SEP}{key[0]}{SEP}{key[1]}", doc)

    def _on_progress(self, mp: int, doc: dict[str, Any]) -> None:
        self.stats.progress += 1
        p, closed_before = doc["partition"], doc["closed_before"]
        known = self.progress[mp]
        if closed_before > known.get(p, 0):
            known[p] = closed_before
            self._put(mp, f"{PROGRESS_KEY}{mp}", {str(k): v for k, v in sorted(known.items())})

    def whole_before(self, mp: int) -> int:
        """Windows starting before this have been closed by every input partition."""
        known = self.progress.get(mp, {})
        if len(known) < self.config.partitions:
            return 0
        return min(known.values())

    def complete(self, mp: int, out: list[Outgoing]) -> None:
        """Emit the windows of merge partition ``mp`` that every input partition closed."""
        through = self.whole_before(mp)
        for start in sorted(self.parts.get(mp, {})):
            if start < through and mp not in self._emitted_in.get(start, ()):
                self._emit(mp, start, out)

    def complete_all(self) -> list[Outgoing]:
        """``complete`` for every merge partition held (after a recovery)."""
        out: list[Outgoing] = []
        for mp in sorted(self.parts):
            self.complete(mp, out)
        return out

    # -- windows -----------------------------------------------------------------------------

    def _emit(self, mp: int, start: int, out: list[Outgoing]) -> None:
        now = self.clock()
        summaries: list[WindowSummary] = []
        for (model, cand), by_partition in sorted(self.parts[mp][start].items()):
            parts = [by_partition[p] for p in sorted(by_partition)]
            profile, same_reference = _reference(parts)
            aggs: dict[str, WindowAggregate] = {}
            dropped: dict[str, set[str]] = {}  # features whose drift is left out, per segment
            for part in parts:
                for segment, state in part["segments"].items():
                    agg = WindowAggregate.from_state(state)
                    if not same_reference:  # bins of different references do not add up
                        dropped.setdefault(segment, set()).update(agg.histograms)
                        agg.histograms = {}
                    aggs[segment] = aggs[segment].merge(agg) if segment in aggs else agg
            for segment in sorted(aggs):
                summary = aggs[segment].summary(
                    WindowKey(model, cand, start, segment or None), self.config.window_ms,
                    profile, now)
                if dropped.get(segment):
                    summary = summary.model_copy(update={
                        "undefined_statistics": summary.undefined_statistics
                        + len(dropped[segment])})
                summaries.append(summary)
            top = sorted((tuple(r) for part in parts for r in part["top"]),
                         key=lambda r: (-r[1], r[0]))[:self.config.exemplars]
            doc = {"model": model, "candidate": cand, "window_start": start,
                   "top": [list(r) for r in top]}
            out.append(Outgoing(Role.EXEMPLARS, f"{model}/{cand}".encode(), orjson.dumps(doc),
                                record=doc))
        summaries = with_controls(summaries)
        for summary in summaries:
            out.append(Outgoing(Role.WINDOWS, f"{summary.model}/{summary.candidate}".encode(),
                                encode(summary), start, summary))
            self.stats.undefined_statistics += summary.undefined_statistics
        for summary in summaries:
            if summary.segment is None:
                self.latest[(summary.model, summary.candidate)] = summary
            if self.alerts is not None:
                for alert in self.alerts.evaluate(summary, summary.ts):
                    out.append(Outgoing(Role.ALERTS, alert.alert_id.encode(), encode(alert),
                                        record=alert))
        self.stats.windows += 1
        self._emitted_in[start].add(mp)
        pending = len(summaries) if self.config.confirm_delivery else 0
        self._pending[start] = self._pending.get(start, 0) + pending
        if not self.config.confirm_delivery:
            self.finish_delivered()

    def delivered(self, start: int) -> None:
        """One summary of the windows starting at ``start`` reached Kafka."""
        if start in self._pending:
            self._pending[start] -= 1

    def finish_delivered(self) -> None:
        """Forget the windows whose summaries were all delivered: their parts are deleted and
        the merge partition's progress and alert states written."""
        for start in sorted(s for s, n in self._pending.items() if n <= 0):
            del self._pending[start]
            for mp in sorted(self._emitted_in.pop(start, ())):
                for key, by_partition in self.parts[mp].pop(start, {}).items():
                    for p in by_partition:
                        self._drop(mp, f"{PART_KEY}{mp}{SEP}{start}{SEP}{p}{SEP}{key[0]}{SEP}"
                                       f"{key[1]}")
                self.done_before[mp] = max(self.done_before.get(mp, 0),
                                           start + self.config.window_ms)
                states = {} if self.alerts is None else {
                    k: v for k, v in self.alerts.states.items()
                    if tuple(k.split("|", 2)[:2]) in self._keys[mp]}
                self._put(mp, f"{DONE_KEY}{mp}", {"done_before": self.done_before[mp],
                                                  "alerts": states})

    def _put(self, mp: int, key: str, value: Any) -> None:
        put_at(self.table, mp, key, value)

    def _drop(self, mp: int, key: str) -> None:
        drop_at(self.table, mp, key)


def check_peers(records: list[bytes], window_ms: int) -> str | None:
    """Why a worker must not join those running (the last records of the partials topic),
    or None: they close windows of another size."""
    for value in records:
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        theirs = doc.get("window_ms") if isinstance(doc, dict) else None
        if isinstance(theirs, int) and theirs != window_ms:
            return (f"the join workers running on this prefix close windows of "
                    f"{theirs / 1000:g} s, this one {window_ms / 1000:g} s: start it with "
                    f"--window-s {theirs / 1000:g}")
    return None


def _reference(parts: list[dict[str, Any]]) -> tuple[Profile | None, bool]:
    """The drift reference of a window's parts, and whether they all binned against the same
    one (workers that learned their own references from their own partitions did not: give
    the join a profile, ``shadow profile build``, when it runs as several workers)."""
    docs = [part["profile"] for part in parts]
    first = docs[0]
    if any(d != first for d in docs[1:]):
        return None, False
    return (Profile.from_dict(first) if first is not None else None), True
