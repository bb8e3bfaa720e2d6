"""Replay in-process: the join's code on recorded requests and the worker's engine."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import torch

from consumers.join import JoinConfig
from producers.traffic import TrafficSpec, build_model, featurize
from shadow.engine import InferenceEngine
from shadow.exceptions import ShadowstreamError
from shadow.models import load_candidate
from shadow.recording import RecordedMessage
from shadow.replay import ReplayCandidate, replay

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


def candidate(cid: str, spec: str = "producers.traffic:build_model") -> ReplayCandidate:
    return ReplayCandidate(cid, InferenceEngine(load_candidate(spec), device="cpu"))


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
    from shadow.report import html_report

    result = run(recorded(600, TrafficSpec(seed=3, disagree=0.05), build_model(0)),
                 candidate("a"))
    page = html_report(result)
    assert page.startswith("<!doctype html>") and "<svg" in page
    assert "Most divergent requests of a" in page and "inputs.amount" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page


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
