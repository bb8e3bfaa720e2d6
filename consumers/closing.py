"""The closing half of ``JoinCore``: windows the watermark has passed are emitted (summaries,
exemplars, or with several workers one part per input partition), then, once delivered,
forgotten (alert rules evaluated, the closing recorded in the table, entries deleted), and
alerts kept until their sink has them. No Kafka here.

The join is one object in three layers: ``consumers.state.JoinState`` (what it remembers,
durable writes, recovery), this one (what happens as event time passes) and
``consumers.join.JoinCore`` (what happens when an event arrives).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import orjson

from consumers.entries import ALERTS_KEY, META_KEY, OUTBOX_KEY, Outgoing, Role, request_of
from consumers.state import JoinState
from consumers.windows import aggregate, window_start, with_controls
from schemas import Alert, WindowSummary, encode

__all__ = ["PART_SCHEMA", "PROGRESS_SCHEMA", "WindowClosing"]

EXEMPLAR_FIELDS = 5
"""The differing fields a JSON exemplar names."""
PART_SCHEMA = "window.part/1"
PROGRESS_SCHEMA = "window.progress/1"


class WindowClosing(JoinState):
    """Closing windows (see the module docstring); ``JoinCore`` is the class to use."""

    def closable(self, watermark: int) -> list[int]:
        """Starts of the open windows that the watermark closes, oldest first."""
        limit = watermark - self.config.grace_ms - self.config.window_ms
        return sorted(s for s in self.windows if s <= limit)

    def entries_of(self, start: int) -> list[tuple[str, dict[str, Any]]]:
        """A window's entries as they are now (see ``prepare``)."""
        return self._entries(start)

    def _entries(self, start: int) -> list[tuple[str, dict[str, Any]]]:
        """A window's entries, read from the table once. Sorted by key: float sums then add
        up in the same order after a restart (same bytes)."""
        return [(k, e) for k in sorted(self.windows.get(start, ()))
                if (e := self.entries.get(k))]

    def summaries(self, entries: list[tuple[str, dict[str, Any]]],
                  now_ms: int | None = None) -> list[WindowSummary]:
        """The summaries of one window, from its entries."""
        aggs = aggregate((e for _, e in entries), self.candidates, self.config.window_ms,
                         self.profiles)
        now = now_ms if now_ms is not None else self.clock()
        return with_controls([aggs[k].summary(k, self.config.window_ms,
                                              self.profiles.get(k.model), now)
                              for k in sorted(aggs, key=lambda k: k.sort_key())])

    @staticmethod
    def exemplars(entries: list[tuple[str, dict[str, Any]]], k: int = 10
                  ) -> dict[tuple[str, str], list[tuple[Any, ...]]]:
        """The ``k`` most divergent requests of a window per model and candidate:
        ``(request id, score)``, and for JSON answers the fields that differed as a third
        item (at most ``EXEMPLAR_FIELDS``)."""
        top: dict[tuple[str, str], list[tuple[Any, ...]]] = defaultdict(list)
        for key, entry in entries:
            if "live" not in entry:
                continue
            for cand, answer in entry["c"].items():
                r = answer.get("r")
                if r:
                    fields = [f.removeprefix("field:") for f, v in r["m"].items()
                              if v and f.startswith("field:")][:EXEMPLAR_FIELDS]
                    top[(entry["m"], cand)].append(
                        (request_of(key), r["s"], fields) if fields else
                        (request_of(key), r["s"]))
        return {pair: sorted(rows, key=lambda r: (-r[1], r[0]))[:k]
                for pair, rows in top.items()}

    def sweep(self, watermark: int, out: list[Outgoing]) -> None:
        """Close every window the watermark has passed: emit its summaries; it is forgotten
        (entries deleted, closing recorded) once they are delivered."""
        for start in self.closable(watermark):
            self._emit(start, out)
        if not self.config.confirm_delivery:
            for start in sorted(self._emitted):
                del self._emitted[start]
                self.forget(start, out)

    def read_to(self, topic: str, partition: int, end: int) -> bool:
        """Whether every message before offset ``end`` of that partition was handled."""
        return self.positions.get(f"{topic}:{partition}", -1) + 1 >= end

    def close_idle(self, watermark: int) -> list[Outgoing]:
        """Emit the windows a watermark closes without writing the table (for a timer: the
        input is idle). They are forgotten when the next event is handled."""
        out: list[Outgoing] = []
        for start in self.closable(watermark):
            self._emit(start, out)
        return out

    def delivered(self, start: int) -> None:
        """One summary of the window starting at ``start`` reached Kafka."""
        if start in self._emitted:
            self._emitted[start] -= 1

    def _emit(self, start: int, out: list[Outgoing]) -> None:
        if start in self._emitted:
            return
        prepared = self.precomputed.pop(start, None) or self.prepare(start)
        if self.config.partials:
            self._emit_parts(start, prepared, out)
            return
        summaries, exemplars = prepared
        self._emitted[start] = len(summaries) if self.config.confirm_delivery else 0
        self._summaries[start] = summaries
        for (model, cand), rows in sorted(exemplars.items()):
            doc = {"model": model, "candidate": cand, "window_start": start, "top": rows}
            out.append(Outgoing(Role.EXEMPLARS, f"{model}/{cand}".encode(), orjson.dumps(doc),
                                record=doc))
        self.closed_before = max(self.closed_before, start + self.config.window_ms)
        for summary in summaries:
            out.append(Outgoing(Role.WINDOWS, f"{summary.model}/{summary.candidate}".encode(),
                                encode(summary), start, summary))
            self.stats.undefined_statistics += summary.undefined_statistics
            if summary.segment is None:
                self.stats.unmatched["live"] += summary.unmatched_live
                self.stats.unmatched["shadow"] += summary.unmatched_shadow

    def closing(self) -> list[int]:
        """The windows the next ``flush`` will close (by the watermark now)."""
        return [s for s in self.closable(self.watermark) if s not in self._emitted]

    def prepare(self, start: int,
                entries: list[tuple[str, dict[str, Any]]] | None = None) -> Any:
        """What closing window ``start`` costs in CPU (aggregates, sketches, drift binning,
        exemplars), from its entries alone (``_entries(start)`` unless given). The Faust app
        runs it in a thread on entries taken before, while the agent waits, so that a large
        window does not hold the event loop (and the group's heartbeats) for seconds; it
        hands the result over in ``precomputed`` unless a recovery came in between."""
        if entries is None:
            entries = self._entries(start)
        if not self.config.partials:
            return self.summaries(entries), self.exemplars(entries)
        by_partition: dict[int, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
        for key, entry in entries:
            by_partition[entry["p"]].append((key, entry))
        return {p: (aggregate((e for _, e in rows), self.candidates, self.config.window_ms,
                              self.profiles), self.exemplars(rows))
                for p, rows in by_partition.items()}

    def _emit_parts(self, start: int, prepared: dict[int, Any], out: list[Outgoing]) -> None:
        """Close a window for the input partitions it is still open in: one part per
        partition, model and candidate (its mergeable aggregates, exemplars and drift
        reference), then each partition's progress, to every merge partition."""
        size = self.config.window_ms
        owned = self.owned_partitions() | set(prepared)
        sent = 0
        for p in sorted(owned):
            if self._closed_at.get(p, 0) > start:
                continue  # closed here before (a partition taken over from another worker)
            aggs, top = prepared.get(p, ({}, {}))
            parts: dict[tuple[str, str], dict[str, Any]] = {}
            for k in sorted(aggs, key=lambda k: k.sort_key()):
                part = parts.get((k.model, k.candidate))
                if part is None:
                    profile = self.profiles.get(k.model)
                    part = parts[(k.model, k.candidate)] = {
                        "schema": PART_SCHEMA, "window_start": start, "window_ms": size,
                        "partition": p, "model": k.model, "candidate": k.candidate,
                        "segments": {}, "top": top.get((k.model, k.candidate), []),
                        "profile": profile.to_dict() if profile is not None else None}
                part["segments"][k.segment or ""] = aggs[k].to_state()
            for (model, _), part in parts.items():
                # Keyed by model: a model's candidates and its control meet in one merge
                # partition, where each candidate's window gets the control's beside it.
                out.append(Outgoing(Role.PARTIALS, model.encode(), orjson.dumps(part), start,
                                    part))
                sent += 1
            self._closed_at[p] = start + size
        for p in sorted(owned):
            marker = {"schema": PROGRESS_SCHEMA, "partition": p, "window_ms": size,
                      "closed_before": self._closed_at.get(p, 0)}
            out.append(Outgoing(Role.PROGRESS, None, orjson.dumps(marker), start, marker,
                                broadcast=True))
            sent += 1
        self._emitted[start] = sent if self.config.confirm_delivery else 0
        self.closed_before = max(self.closed_before, start + size)

    def owned_partitions(self) -> set[int]:
        """The input partitions this core reads (assigned, or seen)."""
        return {int(tp.rpartition(":")[2]) for tp in self._progress}

    def evaluate_delivered(self) -> list[Outgoing]:
        """Alerts of the windows whose summaries were all delivered (for a timer: the rules
        see the last windows of a stream that stopped without waiting for another event)."""
        out: list[Outgoing] = []
        for start in sorted(s for s, pending in self._emitted.items() if pending <= 0):
            self._evaluate(start, out)
        return out

    def forget_delivered(self) -> list[Outgoing]:
        """For a timer: forget the windows whose summaries were all delivered (alerts
        evaluated, closing recorded, entries deleted) without waiting for another record,
        which may not come (a stream that stopped, the last records of a batch). Needs a
        table that places its writes (``at``, the Faust app's); else only evaluates."""
        if self._at is None:
            return self.evaluate_delivered()
        out: list[Outgoing] = []
        for start in sorted(s for s, pending in self._emitted.items() if pending <= 0):
            del self._emitted[start]
            self.forget(start, out)
        for partition in list(self._doomed):
            for key in self._doomed.pop(partition):
                self._drop(partition, key)
        handling = self._partition
        for partition in sorted(self._outbox_dirty):
            self._partition = partition
            self._write_outbox()
        self._partition = handling
        return out

    def _evaluate(self, start: int, out: list[Outgoing]) -> None:
        """Evaluate the alert rules on a window's summaries, once. Only after they were
        delivered, and with states persisted when the window is forgotten: a window emitted
        again after a crash is evaluated from the same states (same alerts, same ids)."""
        summaries = self._summaries.pop(start, [])
        for summary in summaries:
            if summary.segment is None:
                self.latest[(summary.model, summary.candidate)] = summary
            if self.alerts is not None:
                for alert in self.alerts.evaluate(summary, summary.ts):
                    if self.config.keep_unsent_alerts:
                        self._fresh[alert.alert_id] = alert
                    out.append(Outgoing(Role.ALERTS, alert.alert_id.encode(), encode(alert),
                                        record=alert))

    def forget(self, start: int, out: list[Outgoing]) -> None:
        """Record a closed window (in the table), doom its entries, and evaluate its alerts
        if that was not done yet."""
        self._evaluate(start, out)
        size = self.config.window_ms
        kept: set[str] = set()
        for key in self.windows.pop(start, ()):
            entry = self.entries.get(key)
            if entry is not None and window_start(entry["ts"], size) == start:
                if self.config.partials and self._closed_at.get(entry["p"], 0) <= start:
                    kept.add(key)  # of a partition taken over since: closed later
                else:
                    del self.entries[key]
        deltas = self._deltas.pop(start, {})
        if kept:
            self.windows[start] = kept
        for partition, keys in deltas.items():
            if kept and self._closed_at.get(partition, 0) <= start:
                self._deltas[start][partition] = keys
            else:
                self._doomed[partition].extend(keys)
        self.closed_before = max(self.closed_before, start + self.config.window_ms)
        self.closed_offsets.update(self.positions)
        p = self._partition
        if self.config.partials:  # each partition its own: another worker may take it over
            for q in sorted(self.owned_partitions()):
                self._put(q, f"{META_KEY}{q}", {
                    "closed_before": self._closed_at.get(q, 0),
                    "offsets": {tp: o for tp, o in self.closed_offsets.items()
                                if tp.rpartition(":")[2] == str(q)}})
        else:
            self._put(p, f"{META_KEY}{p}", {"closed_before": self.closed_before,
                                              "offsets": self.closed_offsets})
        if self.alerts is not None:
            self._put(p, f"{ALERTS_KEY}{p}", dict(self.alerts.states))
        if self._fresh:  # persisted with the states that produced them
            bucket = self._unsent[self._partition]
            for alert_id, alert in self._fresh.items():
                bucket[alert_id] = alert.model_dump(mode="json", by_alias=True)
            self._fresh.clear()
            self._write_outbox()
        self.stats.windows_closed += 1

    # -- alerts on their way to the sink -------------------------------------------------------

    def alert_done(self, alert_id: str) -> None:
        """The sink has the alert (or gave up on it, counted): it need not be kept."""
        self._fresh.pop(alert_id, None)
        for partition, bucket in self._unsent.items():
            if bucket.pop(alert_id, None) is not None:
                self._outbox_dirty.add(partition)  # rewritten by that partition's next event

    def unsent_alerts(self) -> list[Alert]:
        """Alerts persisted before a restart that their sink may not have: to send again
        (the sink delivers each alert id once)."""
        docs = [d for bucket in self._unsent.values() for d in bucket.values()]
        alerts = [Alert.model_validate(d) for d in docs]
        return sorted(alerts, key=lambda a: (a.window_start, a.ts, a.alert_id))

    def _write_outbox(self) -> None:
        p = self._partition
        self._outbox_dirty.discard(p)
        bucket = self._unsent.get(p)
        if bucket:
            self._put(p, f"{OUTBOX_KEY}{p}", list(bucket.values()))
        else:
            self._drop(p, f"{OUTBOX_KEY}{p}")
