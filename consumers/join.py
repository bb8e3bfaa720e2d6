"""The join of live and shadow answers per request, and the windows it closes. No Kafka here.

``JoinCore`` is driven one Kafka record at a time by the Faust agent in
``consumers.faust.app`` (and can be driven by a test or by replay with a plain dict as its
table); a record carries one event or a batch of events of its partition. It returns what to
send; it never sends. It keeps one *entry* per in-flight request in memory (its format, typed
and versioned, and the table's keys are in ``consumers.entries``), and its only durable
state is ``table``, which the Faust app backs with a changelogged Table: per record, one key
per window the record touched (``~e:<partition>:<window>:<seq>``) holding the entries it
changed, so a batch of events costs one changelog record, not one per event; plus a few
``~`` keys (closed windows, alert states, the reference). A restarted app replays the deltas
in order, finds the same entries and closes the same windows with the same numbers.

Time is event time. Each input partition's progress is the greatest ``ts`` read from it; the
watermark is the least progress of the partitions still active (an event within the last
``partition_idle_s`` wall seconds), so a partition read behind the others (a backlog, a slow
worker's outputs) holds windows open instead of making its events late. With every partition
idle it is the greatest ``ts`` seen. A window ``[s, s+size)`` closes when the watermark
reaches ``s + size + grace``: then every entry of the window is final (a missing side is
*unmatched*), its summaries are emitted and its entries deleted. An event for a window that
has closed is either a replay after a restart (its offset is at or below the offset recorded
when the window closed: ignored) or late (dead letter, counted).

One object in three layers, a file each: ``consumers.state.JoinState`` (what the join
remembers, durable writes, recovery), ``consumers.closing.WindowClosing`` (what happens as
event time passes) and ``JoinCore`` here (what happens when a record arrives).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from consumers.closing import WindowClosing
from consumers.compare import ComparisonError, compare
from consumers.drift import Profile
from consumers.entries import (
    DEAD_KEY,
    PROFILE_KEY,
    Outgoing,
    Role,
    entry_key,
)
from consumers.state import RECORD_EVENTS, JoinConfig, JoinStats
from consumers.windows import (
    output_features,
    request_features,
    top1_as_live,
    window_start,
)
from schemas import ContractError, DivergencePair
from schemas.builders import dead_letter
from schemas.codec import as_output, as_request, encode_batch, events_of

__all__ = ["JoinConfig", "JoinCore", "JoinStats", "Outgoing", "Role", "entry_key"]

log = logging.getLogger("shadowstream.join")




class JoinCore(WindowClosing):
    """The join of live and shadow answers (see the module docstring): ``handle`` each
    record of either input topic, send what it returns."""

    # -- events ------------------------------------------------------------------------------

    def handle(self, topic: str, partition: int, offset: int, key: bytes | None,
               value: bytes | None, seen: list[dict[str, Any]] | None = None,
               flush: bool = True) -> list[Outgoing]:
        """Process one record of either input topic, of one event or a batch (all of this
        partition); returns what to send. Each valid request is appended to ``seen`` when
        given (replay answers them). With ``flush=False`` the table is not written and no
        window closes until ``flush()``: a caller handling many records at once writes their
        changes once (before it commits their offsets)."""
        return self._handle(topic, partition, offset, key, value, None, seen, flush)

    def handle_events(self, topic: str, partition: int, offset: int, key: bytes | None,
                      events: list[Any], flush: bool = True) -> list[Outgoing]:
        """``handle`` for a batch record whose events are already parsed (replay writes its
        candidates' answers this way: no encoding to decode again). They are validated as
        any others."""
        return self._handle(topic, partition, offset, key, None, events, None, flush)

    def _handle(self, topic: str, partition: int, offset: int, key: bytes | None,
                value: bytes | None, parsed: list[Any] | None,
                seen: list[dict[str, Any]] | None, flush: bool) -> list[Outgoing]:
        out: list[Outgoing] = []
        self._partition = partition
        if partition in self._outbox_dirty:
            self._write_outbox()
        if self._emitted:
            for start in sorted(s for s, pending in self._emitted.items() if pending <= 0):
                del self._emitted[start]
                self.forget(start, out)
        if self._doomed:
            for doomed in self._doomed.pop(partition, ()):
                self._drop(partition, doomed)
        if self._legacy:
            self._dirty[partition].update(self._legacy.pop(partition, {}))
        tp = f"{topic}:{partition}"
        data = value or b""
        is_request = topic == self.requests_topic
        events: list[Any] = []
        batched = False
        if parsed is not None:
            events, batched = parsed, True
        else:
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
        if o.get("control"):
            answer["ctl"] = True  # kept with the entry: a restart knows its controls again
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

