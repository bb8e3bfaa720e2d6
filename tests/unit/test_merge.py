"""Several join workers and the merge stage give the windows, exemplars and alerts of one join.

Each worker is a ``JoinCore`` with ``partials`` reading some input partitions; what it sends is
routed as Kafka would route it (parts by key, progress markers to every partition) to
``MergeCore``s, in an order that mixes workers and merge partitions but keeps each worker's
order within a topic partition. No Kafka here; tests/integration/test_join_scale.py runs the
same with Faust workers against the broker.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import Any

import orjson
import pytest

from consumers.drift import Profile
from consumers.join import JoinConfig, JoinCore, Outgoing
from consumers.merge import MergeConfig, MergeCore, check_peers
from consumers.rules import Rule, RuleSet
from consumers.windows import request_features
from schemas import Alert, WindowSummary, decode
from schemas.topics import partition_of
from tests.unit.test_join_core import OUT, REQ, T0, WINDOW, PartitionedTable, traffic

PARTITIONS = 6
RULES = RuleSet((Rule("disagreement", "disagreement_rate", 0.05, for_windows=2,
                      min_samples=20),))


def _profile(log: Any) -> Profile:
    rows = [request_features(d["inputs"], d["live"]["output"])
            for d in (orjson.loads(m[4]) for m in log.messages if m[0] == REQ)][:100]
    return Profile.build(rows, bins=10)


def _config(profile: Profile, **kw: Any) -> JoinConfig:
    return JoinConfig(window_ms=WINDOW, grace_ms=2_000, profiles={"m": profile}, **kw)


def _one_join(log: Any, profile: Profile) -> list[Outgoing]:
    core = JoinCore(_config(profile, rules=RULES), {}, REQ, OUT)
    out: list[Outgoing] = []
    for m in log.messages:
        out += core.handle(*m)
    core.sweep(T0 + 100 * WINDOW, out)
    return out


def _route(outputs: list[list[Outgoing]], seed: int) -> list[tuple[int, bytes]]:
    """(merge partition, value) in an order Kafka could deliver them: each worker's records
    stay in order within a partition; workers and partitions interleave at random."""
    queues: dict[tuple[int, int], list[bytes]] = defaultdict(list)
    for w, out in enumerate(outputs):
        for o in out:
            if o.role == "partials":
                queues[(w, partition_of(o.key, PARTITIONS))].append(o.value)
            elif o.role == "progress":
                assert o.broadcast
                for mp in range(PARTITIONS):
                    queues[(w, mp)].append(o.value)
    rnd = random.Random(seed)
    order: list[tuple[int, bytes]] = []
    live = [k for k in queues if queues[k]]
    while live:
        k = rnd.choice(live)
        order.append((k[1], queues[k].pop(0)))
        live = [k for k in queues if queues[k]]
    return order


def _merge(order: list[tuple[int, bytes]], table: dict | None = None) -> list[Outgoing]:
    merge = MergeCore(MergeConfig(WINDOW, PARTITIONS, rules=RULES), {} if table is None
                      else table)
    merge.recover()
    out: list[Outgoing] = []
    for mp, value in order:
        out += merge.handle(mp, value)
    return out


def _flat(doc: Any, path: str = "") -> dict[str, Any]:
    if isinstance(doc, dict):
        return {k: v for key, sub in doc.items() for k, v in _flat(sub, f"{path}.{key}").items()}
    if isinstance(doc, list):
        return {k: v for i, sub in enumerate(doc) for k, v in _flat(sub, f"{path}[{i}]").items()}
    return {path: doc}


def _same_windows(got: list[Outgoing], want: list[Outgoing]) -> None:
    def windows(out: list[Outgoing]) -> dict[tuple, dict[str, Any]]:
        found: dict[tuple, dict[str, Any]] = {}
        for o in out:
            if o.role == "windows":
                s = decode(o.value, WindowSummary)
                key = (s.model, s.candidate, s.window_start, s.segment)
                assert key not in found, f"window {key} emitted twice"
                found[key] = _flat(s.model_dump(mode="json", exclude={"ts"}))
        return found

    a, b = windows(got), windows(want)
    assert set(a) == set(b) and len(b) >= 6
    for key in b:
        assert a[key].keys() == b[key].keys(), key
        for name, value in b[key].items():
            if isinstance(value, float) and not name.endswith("_bound"):
                # sums of floats added in another order: the last bits may differ
                assert math.isclose(a[key][name], value, rel_tol=1e-9, abs_tol=1e-12), \
                    (key, name)
            else:
                assert a[key][name] == value, (key, name)
    assert any(w[".drift.inputs.x.psi"] > 0 for w in b.values() if ".drift.inputs.x.psi" in w)


def _alerts(out: list[Outgoing]) -> list[tuple]:
    return [(a.model, a.candidate, a.rule, a.window_start, a.state, a.alert_id)
            for a in (decode(o.value, Alert) for o in out if o.role == "alerts")]


def _exemplars(out: list[Outgoing]) -> dict[tuple, list]:
    return {(o.record["model"], o.record["candidate"], o.record["window_start"]):
            [list(r) for r in o.record["top"]] for o in out if o.role == "exemplars"}


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_n_workers_through_the_merge_give_the_windows_and_alerts_of_one(workers: int) -> None:
    log, _ = traffic(900, seed=3, partitions=PARTITIONS)
    profile = _profile(log)
    want = _one_join(log, profile)
    assert [a[4] for a in _alerts(want)] == ["pending", "firing"]  # the test sees alerts
    outputs = []
    for w in range(workers):
        mine = {p for p in range(PARTITIONS) if p % workers == w}
        core = JoinCore(_config(profile, partials=True), {}, REQ, OUT)
        out: list[Outgoing] = []
        for m in log.messages:
            if m[1] in mine:
                out += core.handle(*m)
        core.sweep(T0 + 100 * WINDOW, out)
        assert not [o for o in out if o.role in ("windows", "alerts")]
        outputs.append(out)
    for seed in range(3):
        got = _merge(_route(outputs, seed))
        _same_windows(got, want)
        assert sorted(_alerts(got)) == sorted(_alerts(want))
        assert _exemplars(got) == _exemplars(want)


def test_a_worker_taking_over_the_partitions_of_a_killed_one_changes_no_number() -> None:
    """Worker A reads partitions 0-2 and dies with its last window open; B, which reads 3-5
    and has closed that window for its own (idle: its parts delivered, the window not yet
    forgotten), takes 0-2 over from A's table and replays them from A's last commit."""
    log, _ = traffic(900, seed=5, partitions=PARTITIONS)
    profile = _profile(log)
    want = _one_join(log, profile)
    # As the Faust app: a window is forgotten when the next record comes after its parts
    # were delivered (B's last windows are then emitted, not yet forgotten, at the take-over).
    config = _config(profile, partials=True, confirm_delivery=True)
    mine_a, mine_b = {0, 1, 2}, {3, 4, 5}
    table_a, table_b = PartitionedTable(), PartitionedTable()
    a = JoinCore(config, table_a, REQ, OUT)
    b = JoinCore(config, table_b, REQ, OUT)
    msgs_a = [m for m in log.messages if m[1] in mine_a]
    msgs_b = [m for m in log.messages if m[1] in mine_b]
    def drive(core: JoinCore, out: list[Outgoing], got: list[Outgoing]) -> None:
        out += got
        for o in got:
            if o.window is not None:
                core.delivered(o.window)

    out_a: list[Outgoing] = []
    cut = int(len(msgs_a) * 0.75)  # A and B are in the last window; B closes it (idle)
    for m in msgs_a[:cut]:
        drive(a, out_a, a.handle(*m))
    out_b: list[Outgoing] = []
    for m in msgs_b:
        drive(b, out_b, b.handle(*m))
    drive(b, out_b, b.close_idle(b.max_ts + 2 * WINDOW))  # B is idle: all its windows closed
    assert a.closed_before < b.closed_before  # B has closed a window A still holds open
    # A is gone; its table partitions (the changelog) come to B, which recovers.
    owner: dict[str, int | None] = {}
    for partition, key in table_a.writes:
        owner[key] = partition
    for key, value in table_a.items():
        assert owner[key] in mine_a, key  # every key written from its own partition
        table_b[key] = value
    b.recover()
    b.assign([(t, p) for t in (REQ, OUT) for p in range(PARTITIONS)])
    for m in msgs_a[cut - 50:]:  # replayed since A's last commit, then the rest
        drive(b, out_b, b.handle(*m))
    end: list[Outgoing] = []
    b.sweep(T0 + 100 * WINDOW, end)
    drive(b, out_b, end)
    got = _merge(_route([out_a, out_b], seed=1))
    _same_windows(got, want)
    assert sorted(_alerts(got)) == sorted(_alerts(want))


def test_a_merge_restarted_before_its_windows_were_delivered_emits_them_again() -> None:
    log, _ = traffic(900, seed=3, partitions=PARTITIONS)
    profile = _profile(log)
    want = _one_join(log, profile)
    core = JoinCore(_config(profile, partials=True), {}, REQ, OUT)
    out: list[Outgoing] = []
    for m in log.messages:
        out += core.handle(*m)
    core.sweep(T0 + 100 * WINDOW, out)
    order = _route([out], seed=0)
    table: dict[str, Any] = {}
    config = MergeConfig(WINDOW, PARTITIONS, rules=RULES, confirm_delivery=True)
    # The crash comes between the emission of the second window and that of the last
    # (wherever the routing put them in the order).
    dry = MergeCore(config, {})
    emitted = {}
    for i, (mp, value) in enumerate(order):
        for o in dry.handle(mp, value):
            if o.role == "windows":
                emitted.setdefault(o.window, i)
    n = (emitted[T0 + WINDOW] + emitted[T0 + 2 * WINDOW]) // 2 + 1
    first = MergeCore(config, table)
    got: list[Outgoing] = []
    for mp, value in order[:n]:
        emitted = first.handle(mp, value)
        got += emitted
        for o in emitted:  # what reached Kafka before the crash: all but the last window
            if o.role == "windows" and o.window < T0 + 2 * WINDOW:
                first.delivered(o.window)
    second = MergeCore(config, table)
    second.recover()
    again = second.complete_all()
    for mp, value in order[n - 20:]:  # replayed from the last commit
        again += second.handle(mp, value)
    starts = {o.window for o in again if o.role == "windows"}
    assert T0 + 2 * WINDOW in starts and T0 not in starts  # delivered ones are not repeated
    whole = [o for o in got if o.role != "windows" or o.window < T0 + 2 * WINDOW] + again
    _same_windows(whole, want)
    assert sorted(set(_alerts(whole))) == sorted(_alerts(want))


def test_records_of_a_worker_with_another_window_size_are_ignored_not_fatal() -> None:
    merge = MergeCore(MergeConfig(WINDOW, PARTITIONS), {})
    part = {"schema": "window.part/1", "window_start": T0, "window_ms": 2 * WINDOW,
            "partition": 0, "model": "m", "candidate": "c", "segments": {}, "top": [],
            "profile": None}
    marker = {"schema": "window.progress/1", "partition": 7, "window_ms": WINDOW,
              "closed_before": T0}
    for bad in (part, marker, {"schema": "window.summary/1"}):
        assert merge.handle(0, orjson.dumps(bad)) == []
    assert merge.stats.ignored == 3 and merge.stats.parts == 0 and not merge.progress[0]
    # `shadow join --scale-out` refuses to start beside workers of another window size.
    assert "start it with --window-s 20" in check_peers([orjson.dumps(part)], WINDOW)
    assert check_peers([orjson.dumps(marker), b"not json"], WINDOW) is None


def test_a_control_is_beside_its_candidates_in_the_merged_windows() -> None:
    """The parts of a model's candidates and of its control meet in one merge partition, so
    each merged candidate window carries the control's numbers, as one join's do."""
    log, _ = traffic(900, seed=4, partitions=PARTITIONS)
    for i, (topic, partition, offset, key, value) in enumerate(log.messages):
        doc = orjson.loads(value)
        if topic == OUT and doc["candidate"] == "c2":  # c2 is the model's control
            doc["control"] = True
            log.messages[i] = (topic, partition, offset, key, orjson.dumps(doc))
    profile = _profile(log)
    want = _one_join(log, profile)
    controlled = [o.record for o in want if o.role == "windows" and o.record.control]
    assert controlled and all(w.candidate == "c1" for w in controlled)
    outputs = []
    for w in range(2):
        core = JoinCore(_config(profile, partials=True), {}, REQ, OUT)
        out: list[Outgoing] = []
        for m in log.messages:
            if m[1] % 2 == w:
                out += core.handle(*m)
        core.sweep(T0 + 100 * WINDOW, out)
        outputs.append(out)
    got = _merge(_route(outputs, seed=2))
    _same_windows(got, want)
