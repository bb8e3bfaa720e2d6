"""The join and its windows, driven message by message with a dict as the table (no Kafka)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from typing import Any

import orjson
import pytest

from consumers.join import JoinConfig, JoinCore, Outgoing
from consumers.windows import WindowAggregate, aggregate
from schemas import Alert, DeadLetter, DivergencePair, WindowSummary, decode
from schemas.codec import events_of

REQ, OUT = "t.requests", "t.outputs"
WINDOW = 10_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % WINDOW


def request(i: int, ts: int, probs: list[float], segment: str = "eu") -> dict[str, Any]:
    return {"schema": "mirror.request/1", "request_id": f"r{i}", "model": "m", "ts": ts,
            "inputs": {"x": float(i % 17), "c": "ab"[i % 2]},
            "live": {"version": "v1", "latency_ms": 2.0 + i % 5,
                     "output": {"kind": "probs", "value": probs}},
            "attrs": {"segment": segment}}


def output(i: int, ts: int, cand: str, probs: list[float] | None, err: str | None = None):
    doc = {"schema": "shadow.output/1", "request_id": f"r{i}", "model": "m", "ts": ts,
           "candidate": cand, "latency_ms": 1.0 + i % 3}
    if probs is not None:
        doc["output"] = {"kind": "probs", "value": probs}
    if err:
        doc["error"] = err
    return doc


class Log:
    """Two topics of three partitions, offsets assigned as messages are appended."""

    def __init__(self, partitions: int = 3) -> None:
        self.partitions = partitions
        self.messages: list[tuple[str, int, int, bytes, bytes]] = []
        self._next: Counter[tuple[str, int]] = Counter()

    def append(self, topic: str, key: str, value: bytes | dict) -> None:
        partition = sum(key.encode()) % self.partitions
        offset = self._next[(topic, partition)]
        self._next[(topic, partition)] += 1
        data = value if isinstance(value, bytes) else orjson.dumps(value)
        self.messages.append((topic, partition, offset, key.encode(), data))


def traffic(n: int = 400, seed: int = 1, partitions: int = 3) -> tuple[Log, dict[str, Any]]:
    """Requests over three windows; candidate "c1" answers all but a few, 10% of them with
    the other top class; "c2" answers half. Ground truth returned with the log."""
    rnd = random.Random(seed)
    log = Log(partitions)
    truth = {"disagree": set(), "no_c1": set(), "c1_error": set()}
    pending: list[tuple[str, str, dict]] = []
    for i in range(n):
        ts = T0 + i * (3 * WINDOW // n)
        p = round(rnd.random(), 4)
        live = [p, round(1 - p, 4)]
        pending.append((REQ, f"r{i}", request(i, ts, live)))
        if i % 37 == 5:
            truth["no_c1"].add(f"r{i}")
        elif i % 41 == 7:
            truth["c1_error"].add(f"r{i}")
            pending.append((OUT, f"r{i}", output(i, ts, "c1", None, "boom")))
        else:
            flip = i % 10 == 3 and abs(p - 0.5) > 1e-3
            if flip:
                truth["disagree"].add(f"r{i}")
            pending.append((OUT, f"r{i}", output(i, ts, "c1", live[::-1] if flip else live)))
        if i % 2 == 0:
            pending.append((OUT, f"r{i}", output(i, ts, "c2", live)))
    # Outputs may overtake their request: shuffle within small neighbourhoods.
    for j in range(0, len(pending), 6):
        chunk = pending[j:j + 6]
        rnd.shuffle(chunk)
        pending[j:j + 6] = chunk
    for topic, key, doc in pending:
        log.append(topic, key, doc)
    return log, truth


def pairs_in(out: list[Outgoing]) -> list[DivergencePair]:
    """The pairs sent, whether one per record or a batch per record."""
    return [DivergencePair.model_validate(doc) for o in out if o.role == "pairs"
            for doc in events_of(o.value)[0]]


def run(core: JoinCore, messages) -> list[Outgoing]:
    out: list[Outgoing] = []
    for m in messages:
        out.extend(core.handle(*m))
    return out


def close_all(core: JoinCore, log: Log) -> list[Outgoing]:
    """The end of the stream: a watermark past every window."""
    out: list[Outgoing] = []
    core.sweep(T0 + 100 * WINDOW, out)
    return out


def windows_of(out: list[Outgoing]) -> dict[tuple, WindowSummary]:
    found = {}
    for o in out:
        if o.role == "windows":
            s = decode(o.value, WindowSummary)
            found[(s.candidate, s.window_start, s.segment)] = s
    return found


def make_core(table: dict | None = None, **kw: Any) -> JoinCore:
    config = JoinConfig(window_ms=WINDOW, grace_ms=2_000, reference_size=50, **kw)
    return JoinCore(config, {} if table is None else table, REQ, OUT)


def test_pairs_once_per_request_and_candidate_with_ground_truth() -> None:
    log, truth = traffic()
    core = make_core()
    log.append(OUT, "r10", output(10, T0 + 10 * 75, "c2", [0.1, 0.9]))  # a second answer
    m = log.messages  # ... and two messages delivered again (replayed):
    messages = [*m[:60], m[-1], m[5], m[9], *m[60:-1]]
    out = run(core, messages) + close_all(core, log)
    pairs = pairs_in(out)
    first = {(p.request_id, p.candidate): p for p in pairs}
    c1 = {rid for rid, c in first if c == "c1"}
    assert len(c1) == 400 - len(truth["no_c1"])
    assert {rid for (rid, c), p in first.items() if c == "c1" and p.disagree} == truth["disagree"]
    assert {rid for (rid, c), p in first.items() if p.candidate_error} == truth["c1_error"]
    assert first[("r10", "c2")].disagree is False  # the duplicate answer was ignored
    assert core.stats.duplicates == 1 and core.stats.replayed == 2
    # A replayed message re-sends its pairs (at least once downstream), identical each time.
    assert all(p == first[(p.request_id, p.candidate)] for p in pairs)


def test_windows_conserve_and_match_ground_truth() -> None:
    log, truth = traffic()
    core = make_core()
    out = run(core, log.messages) + close_all(core, log)
    windows = windows_of(out)
    # Exemplars: the ten most divergent pairs of each window, per candidate.
    pairs = pairs_in(out)
    for o in (o for o in out if o.role == "exemplars"):
        doc = orjson.loads(o.value)
        scores = sorted(((p.score, p.request_id) for p in pairs if p.score is not None
                         and p.candidate == doc["candidate"]
                         and p.ts - p.ts % WINDOW == doc["window_start"]), reverse=True)
        assert [s for _, s in doc["top"]] == [s for s, _ in scores[:10]]
    assert {k[1] for k in windows} == {T0, T0 + WINDOW, T0 + 2 * WINDOW}
    for s in windows.values():
        assert s.requests == s.pairs + s.unmatched_live + s.unmatched_shadow + s.dead_lettered
    c1 = [s for (cand, _, seg), s in windows.items() if cand == "c1" and seg is None]
    assert sum(s.requests for s in c1) == 400
    assert sum(s.unmatched_shadow for s in c1) == len(truth["no_c1"])
    assert sum(s.candidate_errors for s in c1) == len(truth["c1_error"])
    compared = 400 - len(truth["no_c1"]) - len(truth["c1_error"])
    disagreements = sum(round(s.disagreement_rate * (s.pairs - s.candidate_errors))
                        for s in c1)
    assert disagreements == len(truth["disagree"]) and compared > 300
    c2 = [s for (cand, _, seg), s in windows.items() if cand == "c2" and seg is None]
    assert sum(s.pairs for s in c2) == 200 and sum(s.unmatched_shadow for s in c2) == 200
    assert all(s.disagreement_rate == 0 for s in c2)
    # Segments split the same requests.
    seg = [s for (cand, _, sg), s in windows.items() if cand == "c1" and sg is not None]
    assert sum(s.requests for s in seg) == 400
    # Drift is measured once the reference (50 requests) is known.
    later = windows[("c1", T0 + 2 * WINDOW, None)]
    assert {"inputs.x", "inputs.c", "output.confidence", "candidate.confidence"} <= set(
        later.drift)
    assert later.latency.live_p50 is not None and later.divergence["p99"] >= 0


def test_unmatched_live_dead_letters_and_late_events() -> None:
    core = make_core()
    log = Log()
    log.append(OUT, "orphan", output(1, T0 + 5, "c1", [0.5, 0.5]) | {"request_id": "orphan"})
    log.append(REQ, "bad", b'{"schema": "mirror.request/1", "model": "m", "ts": %d}' % (T0 + 6))
    log.append(REQ, "junk", b"\x00\xffnot json")
    log.append(REQ, "r2", request(2, T0 + 7, [0.2, 0.8]))
    log.append(OUT, "r2", output(2, T0 + 8, "c1", [0.2, 0.8, 0.0]))  # wrong shape
    out = run(core, log.messages) + close_all(core, log)
    dead = [decode(o.value, DeadLetter) for o in out if o.role == "deadletter"]
    assert [d.stage for d in dead] == ["validate", "decode", "join"]
    assert dead[0].reason.startswith("missing required field") and dead[0].model == "m"
    assert "lengths differ" in dead[2].reason and dead[2].request_id == "r2"
    s = windows_of(out)[("c1", T0, None)]
    assert (s.requests, s.pairs, s.unmatched_live, s.dead_lettered) == (3, 0, 1, 2)
    # An event for the closed window is late: a dead letter, not a silent drop.
    log.append(REQ, "r3", request(3, T0 + 9, [0.5, 0.5]))
    late = run(core, log.messages[-1:])
    assert [o.role for o in late] == ["deadletter"] and core.stats.late == 1
    assert "late" in decode(late[0].value, DeadLetter).reason


@pytest.mark.parametrize("cut,lag", [(0.3, 40), (0.5, 5), (0.8, 300)])
def test_restart_mid_stream_changes_no_number(cut: float, lag: int) -> None:
    """A crash: the table (changelog) survives, the committed offsets lag ``lag`` messages
    behind; the restarted core replays from there. Every window comes out the same, once."""
    log, _ = traffic(600, seed=3)
    whole = make_core()
    expected = windows_of(run(whole, log.messages) + close_all(whole, log))

    table: dict[str, Any] = {}
    first = make_core(table)
    n = int(len(log.messages) * cut)
    before = windows_of(run(first, log.messages[:n]))
    second = make_core(table)
    second.recover()
    after = windows_of(run(second, log.messages[n - lag:]) + close_all(second, log))
    assert second.stats.late == 0 and second.stats.replayed >= lag - 5
    assert not set(before) & set(after)
    assert set(before) | set(after) == set(expected)
    for key, s in expected.items():
        got = after.get(key) or before[key]
        assert got.model_dump(exclude={"ts"}) == s.model_dump(exclude={"ts"}), key


def run_batched(core: JoinCore, messages, size: int) -> list[Outgoing]:
    """As the Faust app drives the core: ``size`` records at a time, then one flush."""
    out: list[Outgoing] = []
    for i in range(0, len(messages), size):
        for m in messages[i:i + size]:
            out.extend(core.handle(*m, flush=False))
        out.extend(core.flush())
    return out


class PartitionedTable(dict):
    """A table that knows which input partition each write comes from, as Faust's does."""

    def __init__(self) -> None:
        super().__init__()
        self.partition: int | None = None
        self.writes: list[tuple[int | None, str]] = []

    def at(self, partition: int):
        table = self

        class _At:
            def __enter__(self) -> None:
                table.partition = partition

            def __exit__(self, *exc: object) -> None:
                table.partition = None
        return _At()

    def __setitem__(self, key: str, value: Any) -> None:
        self.writes.append((self.partition, key))
        super().__setitem__(key, value)


@pytest.mark.parametrize("size", [7, 100, 5000])
def test_records_handled_in_batches_give_the_same_numbers_with_fewer_writes(size: int) -> None:
    log, _ = traffic(600, seed=5)
    one = make_core()
    expected = run(one, log.messages) + close_all(one, log)
    table = PartitionedTable()
    core = make_core(table)
    got = run_batched(core, log.messages, size) + close_all(core, log)
    def pairs(out: list[Outgoing]) -> list[str]:
        return sorted(p.model_dump_json() for p in pairs_in(out))
    assert pairs(got) == pairs(expected) and len(pairs(got)) > 500
    want = windows_of(expected)
    assert set(windows_of(got)) == set(want)
    for key, s in windows_of(got).items():
        assert s.model_dump(exclude={"ts"}) == want[key].model_dump(exclude={"ts"}), key
    deltas = [(p, k) for p, k in table.writes if k.startswith("~e:")]
    # Every delta written from the partition its key names, and fewer writes per batch.
    assert deltas and all(k.startswith(f"~e:{p}:") for p, k in deltas)
    assert all(p is not None for p, _ in table.writes)
    assert len(deltas) <= 3 * 3 * (len(log.messages) // size + 1)


@pytest.mark.parametrize("partials", [False, True])
def test_closing_work_prepared_ahead_gives_the_same_output(partials: bool) -> None:
    """The Faust app aggregates closing windows in a thread (``prepare``) before ``flush``:
    what it hands over is what flush would have computed."""
    log, _ = traffic(600, seed=5)

    def drive(ahead: bool) -> tuple[list[Outgoing], int]:
        core = make_core(partials=partials)
        out: list[Outgoing] = []
        prepared = 0
        for i in range(0, len(log.messages), 50):
            for m in log.messages[i:i + 50]:
                out += core.handle(*m, flush=False)
            if ahead:
                for start in core.closing():
                    core.precomputed[start] = core.prepare(start)
                    prepared += 1
            out += core.flush()
            assert not core.precomputed  # all of it used
        return out + close_all(core, log), prepared

    (plain, _), (ahead, prepared) = drive(False), drive(True)
    assert prepared >= 2  # windows closed mid-stream went through prepare

    def shown(out: list[Outgoing]) -> list[bytes]:
        return [orjson.dumps({k: v for k, v in orjson.loads(o.value).items() if k != "ts"})
                for o in out if o.role in ("windows", "partials", "progress")]

    assert shown(ahead) == shown(plain) and shown(plain)


def test_a_large_batch_is_written_and_sent_in_records_of_bounded_size() -> None:
    """At thousands of requests a second a batch holds tens of thousands of entries: the
    deltas and the pairs records are cut (a Kafka record has a size limit), and a restart
    from those deltas gives the same windows."""
    from consumers.join import RECORD_EVENTS

    log, _ = traffic(6000, seed=7)
    table: dict[str, Any] = {}
    core = make_core(table)
    out = run_batched(core, log.messages[:8000], 8000)
    pairs = [o for o in out if o.role == "pairs"]
    assert max(len(events_of(o.value)[0]) for o in pairs) == RECORD_EVENTS
    deltas = [v for k, v in table.items() if k.startswith("~e:")]
    assert deltas and max(map(len, deltas)) == RECORD_EVENTS
    restarted = make_core(table)
    restarted.recover()
    rest = run_batched(restarted, log.messages[8000:], 8000) + close_all(restarted, log)
    whole = make_core()
    want = windows_of(run(whole, log.messages) + close_all(whole, log))
    got = windows_of(out + rest)
    assert set(got) == set(want)
    for key, w in got.items():
        assert w.model_dump(exclude={"ts"}) == want[key].model_dump(exclude={"ts"}), key


def test_a_crash_between_flushes_loses_nothing_committed() -> None:
    """Offsets are committed only after a flush: a crash replays from the last flush and the
    numbers come out the same."""
    log, _ = traffic(600, seed=6)
    whole = make_core()
    expected = windows_of(run(whole, log.messages) + close_all(whole, log))
    table: dict[str, Any] = {}
    first = make_core(table)
    flushed = 250
    before = windows_of(run_batched(first, log.messages[:flushed], 50))
    for m in log.messages[flushed:flushed + 40]:  # handled, never flushed: lost with the crash
        first.handle(*m, flush=False)
    second = make_core(table)
    second.recover()
    after = windows_of(run_batched(second, log.messages[flushed:], 50) + close_all(second, log))
    assert not set(before) & set(after) and set(before) | set(after) == set(expected)
    for key, s in expected.items():
        got = after.get(key) or before[key]
        assert got.model_dump(exclude={"ts"}) == s.model_dump(exclude={"ts"}), key


def test_a_windows_aggregate_is_its_entries_added_one_by_one_to_the_bit() -> None:
    # aggregate() reads each entry once for its window and segment and fills the sketches
    # and drift bins a column at a time: the numbers of WindowAggregate.add, in order.
    log, _ = traffic(600, seed=3)
    core = make_core()
    run(core, log.messages)
    entries = [e for _, e in sorted(core.entries.items())]
    entries.append({"m": "m", "ts": entries[0]["ts"], "p": 0, "c": {}, "dl": "bad"})
    cands = {"m": {"c1", "c2", "c3"}}  # c3 never answered: every request unmatched for it
    fast = aggregate(entries, cands, WINDOW, core.profiles)
    slow: dict[Any, WindowAggregate] = {}
    for entry in entries:
        start = entry["ts"] - entry["ts"] % WINDOW
        for cand in sorted(cands["m"] | set(entry["c"])):
            for segment in (None, entry.get("seg")) if entry.get("seg") else (None,):
                key = (entry["m"], cand, start, segment)
                agg = slow.get(key, WindowAggregate())
                if agg.add(entry, cand, core.profiles.get("m")):
                    slow[key] = agg
    assert len(fast) == len(slow) >= 6 and any(k.segment for k in fast)
    for key, agg in fast.items():
        got = agg.to_state()
        want = slow[(key.model, key.candidate, key.start, key.segment)].to_state()
        hists, want_hists = got.pop("histograms"), want.pop("histograms")
        assert got == want, key  # counts, sketches and sums: the same floats
        assert hists.keys() == want_hists.keys()
        for name, h in hists.items():  # the moments of a column: numpy's sum, not one by one
            w = want_hists[name]
            assert (h["counts"], h.get("lo"), h.get("hi")) == (w["counts"], w.get("lo"),
                                                               w.get("hi")), name
            for moment in ("mean", "m2"):
                assert h.get(moment) == pytest.approx(w.get(moment), rel=1e-9, abs=1e-12)
    assert any(a.unmatched_shadow for k, a in fast.items() if k.candidate == "c3")


def test_window_aggregates_merge_exactly() -> None:
    log, _ = traffic()
    core = make_core()
    run(core, log.messages)
    entries = list(core.entries.values())
    cands = {"m": {"c1", "c2"}}
    whole = aggregate(entries, cands, WINDOW, core.profiles)
    assert whole and len(entries) > 100
    a = aggregate(entries[::2], cands, WINDOW, core.profiles)
    b = aggregate(entries[1::2], cands, WINDOW, core.profiles)
    for key, agg in whole.items():
        merged = WindowAggregate.from_state(a[key].to_state()).merge(b[key])
        want, got = agg.to_state(), merged.to_state()
        for name in ("divergence", "live_latency", "candidate_latency"):
            assert got[name]["b"] == want[name]["b"]
            assert abs(got[name]["s"] - want[name]["s"]) < 1e-6
            got.pop(name), want.pop(name)
        assert got.pop("metric_sums").keys() == want.pop("metric_sums").keys()
        for name, hist in want["histograms"].items():  # float moments: merged in any order
            other = got["histograms"][name]
            for moment in ("mean", "m2"):
                if moment in hist:
                    assert other.pop(moment) == pytest.approx(hist.pop(moment), rel=1e-9,
                                                              abs=1e-12)
        assert got == want


def test_idle_close_emits_without_writing_and_the_next_event_deletes() -> None:
    log, _ = traffic(100)
    core = make_core()
    streamed = windows_of(run(core, log.messages))
    assert {k[1] for k in streamed} == {T0, T0 + WINDOW}  # the watermark closed these
    before = dict(core.table)
    out = core.close_idle(core.watermark + 60_000)
    assert core.table == before  # a timer may not write the table
    assert {k[1] for k in windows_of(out)} == {T0 + 2 * WINDOW}
    assert core.close_idle(core.watermark + 60_000) == []  # not twice
    # Each partition's entries are deleted when an event of that partition comes (a key is
    # always written from its own partition); late events meanwhile are dead letters.
    for i in range(9990, 9996):
        log.append(REQ, f"r{i}", request(i, T0 + 5, [0.5, 0.5]))
        assert [o.role for o in run(core, log.messages[-1:])] == ["deadletter"]
    assert not [k for k in core.table if not k.startswith("~")]
    metas = [v for k, v in core.table.items() if k.startswith("~meta:")]
    assert max(m["closed_before"] for m in metas) == T0 + 3 * WINDOW


def test_a_partition_read_behind_the_others_holds_the_watermark() -> None:
    """A backlog read one partition at a time: no event may turn late for it."""
    log, _ = traffic()
    natural = make_core()
    expected = windows_of(run(natural, log.messages) + close_all(natural, log))
    by_partition = sorted(log.messages, key=lambda m: (m[1], m[0] == OUT, m[2]))
    core = make_core()
    core.assign([(t, p) for t in (REQ, OUT) for p in range(3)])
    got = windows_of(run(core, by_partition) + close_all(core, log))
    assert core.stats.late == 0
    # Drift differs: its reference is the first 50 requests in reading order.
    skip = {"ts", "drift", "state"}
    for key, s in expected.items():
        assert got[key].model_dump(exclude=skip) == s.model_dump(exclude=skip), key


def test_an_idle_partition_with_records_left_to_read_still_holds_the_watermark() -> None:
    log, _ = traffic(100)
    behind = {(REQ, 2)}
    core = JoinCore(JoinConfig(window_ms=WINDOW, grace_ms=2_000, partition_idle_s=0.0), {},
                    REQ, OUT, caught_up=lambda t, p, _: (t, p) not in behind)
    core.assign([(t, p) for t in (REQ, OUT) for p in range(3)])
    run(core, [m for m in log.messages if (m[0], m[1]) not in behind])
    assert core.watermark == 0 and core.stats.windows_closed == 0  # partition 2 holds it
    behind.clear()  # now it has nothing to read: idle (0 s) and drained, it lets go
    assert core.watermark == core.max_ts


def test_a_window_is_recorded_closed_only_once_its_summaries_are_delivered() -> None:
    log, _ = traffic(300)
    table: dict[str, Any] = {}
    config = JoinConfig(window_ms=WINDOW, grace_ms=2_000, reference_size=50,
                        confirm_delivery=True)
    core = JoinCore(config, table, REQ, OUT)
    first = [o for o in run(core, log.messages) if o.role == "windows"]
    assert first and not [k for k in table if k.startswith("~meta")]  # nothing delivered yet
    # A crash before delivery: the restarted core emits the same windows again.
    again = JoinCore(config, table, REQ, OUT)
    again.recover()
    replay = [o for o in run(again, log.messages[-5:]) if o.role == "windows"]
    assert [decode(o.value, WindowSummary).model_dump(exclude={"ts"}) for o in replay] == \
        [decode(o.value, WindowSummary).model_dump(exclude={"ts"}) for o in first]
    for o in replay:
        again.delivered(o.window)
    run(again, log.messages[-1:])
    assert max(v["closed_before"] for k, v in table.items() if k.startswith("~meta")) == \
        max(o.window for o in replay) + WINDOW


def test_alerts_are_evaluated_on_delivered_windows_and_not_repeated_after_a_restart() -> None:
    from consumers.rules import Rule, RuleSet

    rules = RuleSet((Rule("disagreement", "disagreement_rate", 0.05, for_windows=2,
                          min_samples=50),))
    config = JoinConfig(window_ms=WINDOW, grace_ms=2_000, reference_size=50, rules=rules,
                        confirm_delivery=True)

    def drive(core: JoinCore, messages) -> list[Outgoing]:
        out: list[Outgoing] = []
        for m in messages:
            got = core.handle(*m)
            out += got
            for o in got:
                if o.role == "windows":
                    core.delivered(o.window)
        return out

    log, _ = traffic(600, seed=4)
    whole = JoinCore(config, {}, REQ, OUT)
    expected = [decode(o.value, Alert) for o in drive(whole, log.messages) if o.role == "alerts"]
    assert [(a.candidate, a.state) for a in expected] == [("c1", "pending"), ("c1", "firing")]

    table: dict[str, Any] = {}
    first = JoinCore(config, table, REQ, OUT)
    n = int(len(log.messages) * 0.7)
    got = [decode(o.value, Alert) for o in drive(first, log.messages[:n]) if o.role == "alerts"]
    second = JoinCore(config, table, REQ, OUT)
    second.recover()
    got += [decode(o.value, Alert) for o in drive(second, log.messages[n - 100:])
            if o.role == "alerts"]
    assert [a.alert_id for a in got] == [a.alert_id for a in expected]


def test_alerts_the_sink_never_got_survive_a_crash_and_are_dropped_once_it_has_them() -> None:
    """Kept in the table with the states that produced them, until the sink says so: a crash
    while Redis is down loses none of them."""
    from consumers.rules import Rule, RuleSet

    rules = RuleSet((Rule("disagreement", "disagreement_rate", 0.05, for_windows=2,
                          min_samples=50),))
    config = JoinConfig(window_ms=WINDOW, grace_ms=2_000, reference_size=50, rules=rules,
                        confirm_delivery=True, keep_unsent_alerts=True)

    def drive(core: JoinCore, messages) -> list[Alert]:
        alerts = []
        for m in messages:
            for o in core.handle(*m):
                if o.role == "windows":
                    core.delivered(o.window)
                elif o.role == "alerts":
                    alerts.append(o.record)
        return alerts

    log, _ = traffic(600, seed=4)
    table: dict[str, Any] = {}
    first = JoinCore(config, table, REQ, OUT)
    sent = drive(first, log.messages)  # Redis is down: the sink never acknowledges them
    assert [a.state for a in sent] == ["pending", "firing"]
    assert any(k.startswith("~outbox:") for k in table)
    # A crash: the next core finds them in the table, in order, as they were.
    second = JoinCore(config, table, REQ, OUT)
    second.recover()
    assert second.unsent_alerts() == sent
    # The sink has them now: each partition drops its own record on its next event.
    for a in sent:
        second.alert_done(a.alert_id)
    for p in range(3):
        second.handle(REQ, p, 10_000 + p, f"late-{p}".encode(), b"\x00not json")
    assert not any(k.startswith("~outbox:") for k in table)
    third = JoinCore(config, table, REQ, OUT)
    third.recover()
    assert third.unsent_alerts() == []
    # Without the option (replay, or no Redis) nothing is kept.
    plain = JoinCore(replace(config, keep_unsent_alerts=False), {}, REQ, OUT)
    assert [a.state for a in drive(plain, log.messages)] == ["pending", "firing"]
    assert not any(k.startswith("~outbox:") for k in plain.table)


def test_a_dead_letter_keeps_its_own_key_while_closed_entries_are_deleted() -> None:
    log, _ = traffic(100)
    core = make_core()
    run(core, log.messages)
    core.close_idle(core.watermark + 60_000)  # dooms every entry, per partition
    (o,) = core.handle(REQ, 0, 10_000, b"garbage-key", b"\x00not json")
    dead = decode(o.value, DeadLetter)
    assert o.key == b"garbage-key" and dead.key_b64 == "Z2FyYmFnZS1rZXk="


def test_read_to_says_whether_a_partition_was_read_to_a_given_end() -> None:
    # The app closes idle windows only when the broker's ends say everything was read.
    log, _ = traffic(30)
    core = make_core()
    run(core, log.messages)
    ends: Counter[tuple[str, int]] = Counter()
    for topic, partition, offset, _, _ in log.messages:
        ends[(topic, partition)] = max(ends[(topic, partition)], offset + 1)
    assert all(core.read_to(t, p, end) for (t, p), end in ends.items())
    assert not core.read_to(REQ, 0, ends[(REQ, 0)] + 1)  # one more message is waiting
    assert core.read_to(REQ, 7, 0) and not core.read_to(REQ, 7, 1)  # never read from


def test_two_models_may_use_the_same_request_ids() -> None:
    # Two services that both number their requests: the second model's request was taken
    # for a duplicate of the first's and never reached a window.
    log = Log()
    for i in range(20):
        for model in ("m", "price-model"):
            req = {**request(i, T0 + i, [0.4, 0.6]), "model": model}
            log.append(REQ, f"r{i}", req)
            log.append(OUT, f"r{i}", {**output(i, T0 + i, "c1", [0.4, 0.6]), "model": model})
    core = make_core()
    out = run(core, log.messages) + close_all(core, log)
    assert core.stats.duplicates == 0 and core.stats.pairs == 40
    models = {w.model: w for w in (o.record for o in out if o.role == "windows")
              if w.segment is None}
    assert set(models) == {"m", "price-model"}
    assert all(w.requests == w.pairs == 20 for w in models.values())
    exemplars = [o.record for o in out if o.role == "exemplars"]
    assert all(rid.startswith("r") for doc in exemplars for rid, _ in doc["top"])


def test_a_timer_forgets_delivered_windows_without_waiting_for_another_record() -> None:
    """The last records of a stream close windows; no record comes after them. The app's
    timer (``forget_delivered``) records them closed once delivered, writing each key from
    its own partition, so a restart does not emit them again."""
    log, _ = traffic(600, seed=8)
    table = PartitionedTable()
    core = make_core(table, confirm_delivery=True)
    out = run_batched(core, log.messages, 10_000)  # one batch: no record after the flush
    core.sweep(T0 + 100 * WINDOW, out)
    emitted = [o for o in out if o.role == "windows"]
    assert emitted and core.stats.windows_closed == 0
    for o in emitted:
        core.delivered(o.window)
    core.forget_delivered()
    assert core.stats.windows_closed == len({o.window for o in emitted})
    assert not [k for k in table if k.startswith("~e:")]  # the entries are deleted
    assert all(p is not None for p, _ in table.writes)
    restarted = make_core(table, confirm_delivery=True)
    restarted.recover()
    again: list[Outgoing] = []
    restarted.sweep(T0 + 100 * WINDOW, again)
    assert not [o for o in again if o.role == "windows"]


def test_the_table_records_its_entry_format_and_a_newer_one_is_refused() -> None:
    from consumers.entries import ENTRY_VERSION, FORMAT_KEY, FormatError, Role

    log, _ = traffic(60)
    table: dict[str, Any] = {}
    core = JoinCore(JoinConfig(window_ms=WINDOW), table, REQ, OUT)
    out = run(core, log.messages)
    assert {o.role for o in out} <= set(Role) and Role.PAIRS == "pairs"
    formats = {k: v for k, v in table.items() if k.startswith(FORMAT_KEY)}
    assert formats and all(v == {"entry_version": ENTRY_VERSION} for v in formats.values())
    mine = JoinCore(JoinConfig(window_ms=WINDOW), dict(table), REQ, OUT)
    mine.recover()  # reads its own
    assert mine.entries == core.entries and mine.entries
    # A table written by a newer release: refused in one line, before any entry is read.
    newer = dict(table)
    key = next(iter(formats))
    newer[key] = {"entry_version": ENTRY_VERSION + 1}
    with pytest.raises(FormatError, match=f"entry format {ENTRY_VERSION + 1}; this version "
                                          f"reads up to {ENTRY_VERSION}"):
        JoinCore(JoinConfig(window_ms=WINDOW), newer, REQ, OUT).recover()
    # A table of the release before the format key (no ~format: keys) is read as version 1.
    older = JoinCore(JoinConfig(window_ms=WINDOW),
                     {k: v for k, v in table.items() if not k.startswith(FORMAT_KEY)}, REQ, OUT)
    older.recover()
    assert older.entries == core.entries
