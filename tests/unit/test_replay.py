"""Replay in-process: the join's code on recorded requests and the worker's engine."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import torch

from consumers.join import JoinConfig
from shadow.exceptions import ShadowstreamError
from shadow.offline.recordfile import RecordedMessage
from shadow.offline.replay import ReplayCandidate, replay
from shadow.runtime.engine import InferenceEngine
from shadow.runtime.models import load_candidate
from shadow.sim.traffic import TrafficSpec, build_model, featurize

WINDOW = 10_000
T0 = 1_800_000_000_000


def recorded(n: int, spec: TrafficSpec, model: torch.nn.Module) -> list[RecordedMessage]:
    """What `shadow record` would read back: mirrored requests as the generator sends them."""
    events = [spec.event(i) for i in range(n)]
    with torch.inference_mode():
        probs = model(torch.tensor([featurize(e.inputs) for e in events])).tolist()
    out = []
    for i, (e, p) in enumerate(zip(events, probs, strict=True)):
        answer = [round(v, 6) for v in p]
        if e.disagree:
            answer.reverse()
        doc = {"schema": "mirror.request/1", "request_id": e.request_id, "model": spec.model,
               "ts": T0 + i * 20, "inputs": e.inputs,
               "live": {"version": "v1", "latency_ms": 1.0 + i % 3,
                        "output": {"kind": "probs", "value": answer}},
               "attrs": {"segment": e.segment}}
        out.append(RecordedMessage("shadow.requests", i % 3, i // 3, T0 + i * 20,
                                   e.request_id.encode(), orjson.dumps(doc)))
    return out


def candidate(cid: str, spec: str = "shadow.sim.traffic:build_model") -> ReplayCandidate:
    return ReplayCandidate.from_spec(cid, spec, device="cpu", max_batch=64)


def run(messages: list[RecordedMessage], *cands: ReplayCandidate) -> Any:
    return replay(messages, list(cands), join=JoinConfig(window_ms=WINDOW, grace_ms=1000,
                                                         reference_size=100), batch=64)


def test_pairs_and_disagreements_equal_the_ground_truth_for_each_candidate() -> None:
    spec = TrafficSpec(seed=0, disagree=0.1)
    messages = recorded(1500, spec, build_model(0))
    messages.append(RecordedMessage("shadow.requests", 0, 999, T0, b"bad", b"{not json"))
    result = run(messages, candidate("same"), candidate("other", "tests.models_for_tests:"
                                                                  "fraud_seed1"))
    report = result.report
    truth = sum(spec.event(i).disagree for i in range(1500))
    assert report["requests"] == 1500 and report["dead_lettered"] == 1
    same = report["candidates"]["same"]["models"]["fraud-scorer"]
    overall = same["overall"]
    assert overall["requests"] == overall["pairs"] == 1500
    assert round(overall["disagreement_rate"] * 1500) == truth
    windows = [w for w in same["windows"] if "segment" not in w]
    assert sum(w["requests"] for w in windows) == 1500 and len(windows) == 3
    for w in same["windows"]:
        assert w["requests"] == w["pairs"] + w["unmatched_live"] + w["unmatched_shadow"] + \
            w["dead_lettered"]
    other = report["candidates"]["other"]["models"]["fraud-scorer"]["overall"]
    assert other["pairs"] == 1500 and other["disagreement_rate"] > overall["disagreement_rate"]
    top = report["candidates"]["same"]["top"]
    assert len(top) == 20 and top[0]["score"] >= top[-1]["score"]
    assert {"inputs", "live", "candidate", "metrics"} <= set(top[0])
    assert "inputs.amount" in overall["drift"]
    assert result.timing["candidates"]["same"]["ms_per_request"] > 0


def test_the_same_input_and_models_give_the_same_json_bytes() -> None:
    messages = recorded(600, TrafficSpec(seed=3, disagree=0.05), build_model(0))
    first = run(messages, candidate("a")).json_bytes()
    second = run(messages, candidate("a")).json_bytes()
    assert first == second and b"candidate_p99" not in first


def test_nothing_to_replay_and_bad_candidates_are_errors() -> None:
    with pytest.raises(ShadowstreamError, match="no mirrored requests"):
        run([], candidate("a"))
    with pytest.raises(ShadowstreamError, match="must differ"):
        run(recorded(10, TrafficSpec(), build_model(0)), candidate("a"), candidate("a"))


def test_html_report_is_self_contained() -> None:
    from shadow.offline.report import html_report

    result = run(recorded(600, TrafficSpec(seed=3, disagree=0.05), build_model(0)),
                 candidate("a"))
    page = html_report(result)
    assert page.startswith("<!doctype html>") and "<svg" in page
    assert page.index("Verdict") < page.index("<svg")  # the decision first
    assert "candidates side by side" in page and "inputs.amount" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "mean_confidence_delta" not in page  # names a reader knows, not raw keys
    assert "mean confidence change (candidate - live)" in page


@pytest.mark.parametrize("disagree,critical,decision", [
    (0.0, True, "PROMOTE"), (0.05, True, "ROLLBACK"), (0.05, False, "HOLD")])
def test_verdict_on_a_replay(disagree: float, critical: bool, decision: str) -> None:
    from consumers.verdict import JudgeConfig, MetricCheck, judge

    report = run(recorded(1500, TrafficSpec(seed=5, disagree=disagree), build_model(0)),
                 candidate("c")).report
    windows = [w for w in report["candidates"]["c"]["models"]["fraud-scorer"]["windows"]
               if "segment" not in w]
    config = JudgeConfig(metrics=(MetricCheck("disagreement_rate", critical=critical,
                                              limit=0.02),
                                  MetricCheck("candidate_error_rate", critical=True,
                                              limit=0.01)))
    verdict = judge(windows, config)
    assert verdict.decision == decision, verdict.reason


def test_replay_with_latency_gives_the_verdict_candidate_latency_to_judge() -> None:
    from consumers.verdict import JudgeConfig, MetricCheck, judge

    messages = recorded(1500, TrafficSpec(seed=5), build_model(0))
    config = JudgeConfig(metrics=(MetricCheck("latency_p99", allowed_increase=0.2),))

    def latency_p99(result: Any) -> tuple[str, str]:
        windows = [w for w in result.report["candidates"]["c"]["models"]["fraud-scorer"][
            "windows"] if "segment" not in w]
        verdict = judge(windows, config)
        return verdict.decision, verdict.results[0].outcome

    # Windows of 2 s (100 requests): enough of them for Mann-Whitney to see a difference.
    join = JoinConfig(window_ms=2000, grace_ms=1000, reference_size=100)
    plain = replay(messages, [candidate("c")], join=join, batch=64)
    assert plain.report["candidate_latency"] == "left out"
    assert latency_p99(plain) == ("PROMOTE", "no data")
    # A candidate 20 ms slower a batch than the live latency recorded (1 to 3 ms): measured,
    # it is held for its latency.
    slow = replay(messages, [candidate("c", "tests.models_for_tests:slow")], join=join,
                  batch=64, latency=True)
    assert slow.report["candidate_latency"] == "measured"
    assert latency_p99(slow) == ("HOLD", "fail")


def _as_old_recording(path: Any, messages: list[RecordedMessage]) -> None:
    """What `shadow record` wrote before recordings were time-ordered: partition after
    partition, no header."""
    import base64

    import zstandard

    lines = [orjson.dumps({"topic": m.topic, "partition": m.partition, "offset": m.offset,
                           "timestamp": m.timestamp,
                           "key_b64": base64.b64encode(m.key or b"").decode(),
                           "value_b64": base64.b64encode(m.value).decode()})
             for m in sorted(messages, key=lambda m: (m.partition, m.offset))]
    path.write_bytes(zstandard.ZstdCompressor().compress(b"\n".join(lines)))


def test_a_recording_of_several_partitions_gives_the_pairs_and_windows_of_the_live_order(
        tmp_path: Any) -> None:
    from shadow.offline.recording import read_recording

    # 3,000 requests over 60 s on 3 partitions, windows of 10 s with 1 s of grace: read
    # partition after partition, the later partitions' events would come after their
    # windows closed (dead-lettered as late, the windows short of requests).
    messages = recorded(3000, TrafficSpec(seed=4, disagree=0.05), build_model(0))
    path = tmp_path / "old.jsonl.zst"
    _as_old_recording(path, messages)
    from_file = run(list(read_recording(path)), candidate("c"))
    live_order = run(messages, candidate("c"))
    assert from_file.report["dead_lettered"] == 0 and from_file.report["requests"] == 3000
    assert from_file.json_bytes() == live_order.json_bytes()
    windows = [w for w in from_file.report["candidates"]["c"]["models"]["fraud-scorer"]
               ["windows"] if "segment" not in w]
    assert len(windows) == 6 and sum(w["pairs"] for w in windows) == 3000


def test_a_card_with_labels_is_judged_against_live_answers_without_them(
        tmp_path: Any) -> None:
    # The README's card names the classes; the service answers bare probabilities. The
    # candidate's top-1 labels are judged in the live answers' terms (indices), and no
    # statistic is ever NaN (chi-square on labels the reference never had crashed replay).
    card = tmp_path / "fraud.card.toml"
    card.write_text('output = "probs"\nlabels = ["legit", "fraud"]\n'
                    '[[features]]\nfield = "amount"\ntransform = "log1p"\nscale = 0.2\n'
                    '[[features]]\nfield = "hour"\nscale = 0.043478260869565216\n'
                    '[[features]]\nfield = "country"\none_hot = ["DE", "FR", "US"]\n'
                    '[[features]]\nfield = "history"\nsize = 3\n')
    labelled = ReplayCandidate("labelled", InferenceEngine(load_candidate(
        "shadow.sim.traffic:build_model", card=card), device="cpu"))
    messages = recorded(1500, TrafficSpec(seed=6, disagree=0.1), build_model(0))
    report = run(messages, labelled, candidate("plain")).report
    models = {c: report["candidates"][c]["models"]["fraud-scorer"]["overall"]
              for c in ("labelled", "plain")}
    assert models["labelled"]["disagreement_rate"] == models["plain"]["disagreement_rate"]
    assert models["labelled"]["drift"]["candidate.top1"] == models["plain"]["drift"][
        "candidate.top1"]
    assert models["labelled"]["undefined_statistics"] == 0


def test_a_candidate_that_fails_on_every_row_shows_its_errors_and_their_reason() -> None:
    from rich.console import Console

    from shadow.cli.views import replay_table

    messages = recorded(300, TrafficSpec(seed=1), build_model(0))
    result = run(messages, candidate("broken", "tests.models_for_tests:broken"))
    errors = result.report["candidates"]["broken"]["errors"]
    assert errors["count"] == 300
    [(reason, count)] = errors["reasons"].items()
    assert count == 300 and reason.startswith("RuntimeError: mat1 and mat2 shapes")
    overall = result.report["candidates"]["broken"]["models"]["fraud-scorer"]["overall"]
    assert overall["candidate_errors"] == 300
    console = Console(width=300, record=True)
    console.print(replay_table(result))
    text = console.export_text()
    assert "errors" in text.splitlines()[2] and "300 requests answered with an error" in text
    assert "RuntimeError: mat1 and mat2 shapes" in text


def test_several_candidates_close_no_window_on_each_other() -> None:
    # Batches spanning more event time than the grace: with one candidate's whole batch
    # handled before the next one's, the first closed windows on the second's answers
    # (dead-lettered as late, counted unmatched).
    messages = recorded(3000, TrafficSpec(seed=3, disagree=0.03), build_model(0))
    result = run(messages, candidate("a"), candidate("b", "shadow.sim.traffic:build_retrained"),
                 candidate("c", "tests.models_for_tests:broken"))
    assert result.report["dead_lettered"] == 0
    for cid in ("a", "b", "c"):
        overall = result.report["candidates"][cid]["models"]["fraud-scorer"]["overall"]
        assert overall["pairs"] == 3000 and overall["unmatched_shadow"] == 0, cid
    alone = run(messages, candidate("b", "shadow.sim.traffic:build_retrained")).report
    assert alone["candidates"]["b"] == result.report["candidates"]["b"]


def test_request_ids_seen_twice_replay_without_error() -> None:
    # Two runs of the same generator seed reuse every id: the report's ranking of the most
    # divergent pairs compared the rows themselves on ties, and replay crashed.
    first = recorded(600, TrafficSpec(seed=0, disagree=0.2), build_model(0))
    later = [RecordedMessage(m.topic, m.partition, m.offset + 1000, m.timestamp + 600_000,
                             m.key, orjson.dumps({**orjson.loads(m.value),
                                                  "ts": orjson.loads(m.value)["ts"] + 600_000}))
             for m in first]
    report = run(first + later, candidate("v14", "shadow.sim.traffic:build_retrained")).report
    overall = report["candidates"]["v14"]["models"]["fraud-scorer"]["overall"]
    assert overall["pairs"] == 1200 and report["dead_lettered"] == 0
    assert len(report["candidates"]["v14"]["top"]) == 20


def test_replay_evaluates_the_joins_alert_rules_into_its_report() -> None:
    import itertools

    from rich.console import Console

    from consumers import RuleSet
    from shadow.cli.views import replay_table
    from shadow.offline.report import html_report

    messages = recorded(1500, TrafficSpec(seed=0, disagree=0.0), build_model(0))
    join = JoinConfig(window_ms=WINDOW, grace_ms=1000, reference_size=100, rules=RuleSet())

    def judged() -> Any:
        return replay(messages, [candidate("same"), candidate(
            "other", "tests.models_for_tests:fraud_seed1")], join=join, batch=64)

    result = judged()
    models = {cid: c["models"]["fraud-scorer"] for cid, c in result.report["candidates"].items()}
    # Another model disagrees on many requests: the shipped disagreement rule fires on the
    # evidence of its first window, as the live join raises it; the same model does not.
    other = [a for a in models["other"]["alerts"] if a["rule"] == "disagreement"]
    assert [(a["previous_state"], a["state"]) for a in other][:1] == [("ok", "firing")]
    assert all(a["window_start"] < b["window_start"] for a, b in itertools.pairwise(other))
    assert not [a for a in models["same"]["alerts"] if a["rule"] == "disagreement"]
    assert judged().json_bytes() == result.json_bytes()  # alerts too: the same bytes
    page = html_report(result)
    assert "id='alerts'" in page and "ok &rarr; <b>firing</b>" in page
    console = Console(record=True, width=200)
    console.print(replay_table(result))
    assert "other on fraud-scorer: alerts firing: disagreement" in console.export_text()


def test_a_replay_batch_ends_at_its_messages_or_their_bytes() -> None:
    from shadow.offline.replay import BATCH_BYTES_PER_MESSAGE, batches

    def message(size: int) -> RecordedMessage:
        return RecordedMessage("t", 0, 0, T0, None, b"x" * size)

    small = [message(100) for _ in range(10)]
    assert [len(c) for c in batches(small, 4)] == [4, 4, 2]
    # Records of many events: the batch ends by bytes, well before 4 of them.
    big = [message(2 * BATCH_BYTES_PER_MESSAGE) for _ in range(5)]
    assert [len(c) for c in batches(big, 4)] == [2, 2, 1]
    assert list(batches([], 4)) == []
