"""``replay(jobs=N)``: the partitions shared among processes, the same report to the byte."""

from __future__ import annotations

from functools import partial
from typing import Any

import orjson
import pytest

from consumers import RuleSet
from consumers.join import JoinConfig
from schemas.codec import encode_batch
from shadow.exceptions import ShadowstreamError
from shadow.offline.recordfile import RecordedMessage
from shadow.offline.replay import ReplayCandidate, engine_loader, replay
from shadow.sim.traffic import TrafficSpec, build_model
from tests.unit.test_replay import T0, candidate, recorded


def awkward_recording() -> list[RecordedMessage]:
    """Three partitions over a minute, with what makes the jobs' answers differ from one
    process's if they are not driven in step: batch records, a record that is not JSON, a
    request for a window closed long ago (late), ids seen twice, a reference learned from
    requests of every partition."""
    messages = recorded(3000, TrafficSpec(seed=9, disagree=0.05), build_model(0))
    out: list[RecordedMessage] = []
    pending: dict[int, list[RecordedMessage]] = {}
    for i, m in enumerate(messages):
        if 600 <= i < 1200:  # a stretch of batch records of four events
            group = pending.setdefault(m.partition, [])
            group.append(m)
            if len(group) == 4:
                out.append(RecordedMessage(m.topic, m.partition, group[0].offset, m.timestamp,
                                           group[0].key, encode_batch(
                                               [orjson.loads(g.value) for g in group])))
                del pending[m.partition]
            continue
        out.append(m)
        if i == 1500:
            out.append(RecordedMessage(m.topic, 1, 10_000, m.timestamp, b"bad", b"{not json"))
        if i == 2500:  # the first request again, its window long closed: late
            out.append(RecordedMessage(m.topic, 2, 10_001, m.timestamp, messages[0].key,
                                       messages[0].value))
    again = [RecordedMessage(m.topic, m.partition, m.offset + 20_000, m.timestamp + 60_000,
                             m.key, orjson.dumps({**orjson.loads(m.value),
                                                  "ts": orjson.loads(m.value)["ts"] + 60_000}))
             for m in messages[:300]]
    return out + again


def replayed(messages: list[RecordedMessage], jobs: int) -> Any:
    join = JoinConfig(window_ms=10_000, grace_ms=1000, reference_size=100, rules=RuleSet())
    return replay(messages, [candidate("same"), candidate("other", "tests.models_for_tests:"
                                                                   "fraud_seed1"),
                             candidate("broken", "tests.models_for_tests:broken")],
                  join=join, batch=64, jobs=jobs)


def test_jobs_give_the_report_of_one_process_to_the_byte() -> None:
    messages = awkward_recording()
    one = replayed(messages, 1)
    report = one.report
    assert report["dead_lettered"] >= 2 and "late: its window has closed" in str(
        report["dead_letter_reasons"])
    same = report["candidates"]["same"]["models"]["fraud-scorer"]
    assert same["overall"]["drift"] and same["alerts"] is not None
    assert report["candidates"]["broken"]["errors"]["count"] > 0
    for jobs in (2, 3):
        assert replayed(messages, jobs).json_bytes() == one.json_bytes(), jobs
    # The rate is of requests (a batch record holds several), as the terminal says.
    assert report["messages"] < report["requests"]
    assert one.timing["requests_per_s"] == pytest.approx(
        report["requests"] / one.timing["seconds"])


def test_jobs_refuse_what_they_cannot_do() -> None:
    messages = recorded(100, TrafficSpec(seed=1), build_model(0))
    with pytest.raises(ShadowstreamError, match="keep_pairs"):
        replay(messages, [candidate("a")], jobs=2, keep_pairs=True)
    with pytest.raises(ShadowstreamError, match="no mirrored requests"):
        replay([], [candidate("a")], jobs=2)
    engine = candidate("a").engine
    with pytest.raises(ShadowstreamError, match="cannot be loaded in a job process"):
        replay(messages, [ReplayCandidate("a", engine)], jobs=2)
    # What fails in a job is said, with its reason, and nothing hangs.
    unloadable = ReplayCandidate("a", engine, partial(engine_loader, "no.such.module:model"))
    with pytest.raises(ShadowstreamError, match=r"a replay job failed: .*no\.such\.module"):
        replay(messages, [unloadable], jobs=2)
    assert all(m.timestamp >= T0 for m in messages)
