"""Text and JSON answers with a control, through replay: a candidate equal to live is
promoted although its text differs from live on many requests; one with other weights is
rolled back. The models are real torch modules that sample (shadow.sim.chat, .quotes)."""

from __future__ import annotations

import itertools
import tomllib
from typing import Any

import orjson
import pytest

from consumers.compare import Tolerances
from consumers.join import JoinConfig
from consumers.rules import RuleSet
from consumers.verdict import JudgeConfig, MetricCheck, judge
from shadow.offline.recordfile import RecordedMessage
from shadow.offline.replay import ReplayCandidate, replay
from shadow.runtime.engine import InferenceEngine
from shadow.runtime.models import ModelCard, load_candidate
from shadow.sim import chat, quotes

WINDOW = 10_000
T0 = 1_800_000_000_000
# Generative answers disagree with live by sampling alone: the excess over the control is
# judged against a limit that its interval can pass on a few thousand pairs.
VERDICT = JudgeConfig(metrics=(MetricCheck("disagreement_rate", critical=True, limit=0.05),),
                      min_pairs=100)


def _recorded(model: str, factory: str, rows: list[tuple[str, dict[str, Any], str]]
              ) -> list[RecordedMessage]:
    """Mirrored requests as a service answering with ``factory`` sends them, 3 partitions."""
    live = InferenceEngine(load_candidate(factory), max_batch=256)
    answers = live.infer([inputs for _, inputs, _ in rows])
    out = []
    for i, ((rid, inputs, segment), a) in enumerate(zip(rows, answers, strict=True)):
        assert a.error is None, a.error
        doc = {"schema": "mirror.request/1", "request_id": rid, "model": model,
               "ts": T0 + i * 10, "inputs": inputs,
               "live": {"version": "v1", "latency_ms": 2.0, "output": a.output},
               "attrs": {"segment": segment}}
        out.append(RecordedMessage("shadow.requests", i % 3, i // 3, T0 + i * 10,
                                   rid.encode(), orjson.dumps(doc)))
    return out


def _replay(messages: list[RecordedMessage], tolerances: str, module: str,
            candidates: dict[str, str], control: str, jobs: int = 1) -> Any:
    cands = [ReplayCandidate.from_spec(cid, f"{module}:{f}", max_batch=256)
             for cid, f in candidates.items()]
    cands.append(ReplayCandidate.from_spec("control", f"{module}:{control}", max_batch=256,
                                           control=True))
    join = JoinConfig(window_ms=WINDOW, grace_ms=1000, reference_size=200, rules=RuleSet(),
                      tolerances=Tolerances.from_dict(tomllib.loads(tolerances)))
    return replay(messages, cands, join=join, batch=256, jobs=jobs)


@pytest.fixture(scope="module")
def chat_report() -> Any:
    rows = [(p.request_id, {"message": p.message}, p.segment)
            for p in itertools.islice(chat.prompts(seed=7), 4000)]
    messages = _recorded("support-chat", "shadow.sim.chat:build_chat", rows)
    return _replay(messages, chat.TOLERANCES, "shadow.sim.chat",
                   {"same": "build_chat_same", "retrained": "build_chat_retrained"},
                   "build_chat_control")


def _windows(result: Any, cid: str, model: str) -> list[dict[str, Any]]:
    return [w for w in result.report["candidates"][cid]["models"][model]["windows"]
            if "segment" not in w]


def test_a_text_candidate_equal_to_live_is_promoted_against_the_control(
        chat_report: Any) -> None:
    same = chat_report.report["candidates"]["same"]["models"]["support-chat"]["overall"]
    # Its raw text differs from live on many requests, as the control's does.
    assert same["divergence"]["mean_exact_match"] < 0.9
    assert same["disagreement_rate"] > 0.1
    control = same["control"]
    assert control["candidate"] == "control" and control["disagreement_rate"] > 0.1
    assert abs(control["excess_disagreement_rate"]) < 0.05
    verdict = judge(_windows(chat_report, "same", "support-chat"), VERDICT)
    assert verdict.decision == "PROMOTE", verdict.reason
    assert "control" in verdict.results[0].reason
    # Without the control, the live model's own variability alone fails it.
    raw = [{k: v for k, v in w.items() if k != "control"}
           for w in _windows(chat_report, "same", "support-chat")]
    assert judge(raw, VERDICT).decision == "ROLLBACK"


def test_a_text_candidate_with_other_weights_is_rolled_back(chat_report: Any) -> None:
    windows = _windows(chat_report, "retrained", "support-chat")
    assert all(w["control"]["excess_disagreement_rate"] > 0.3 for w in windows)
    verdict = judge(windows, VERDICT)
    assert verdict.decision == "ROLLBACK", verdict.reason
    overall = chat_report.report["candidates"]["retrained"]["models"]["support-chat"]["overall"]
    assert overall["divergence"]["mean_token_f1"] < 0.5
    # The top rows carry a word diff for the report.
    top = chat_report.report["candidates"]["retrained"]["top"][0]
    assert any(tag != "equal" for tag, _, _ in top["diff"])


def test_the_control_is_marked_and_no_alert_judges_its_noise(chat_report: Any) -> None:
    rep = chat_report.report["candidates"]["control"]["models"]["support-chat"]
    assert rep["overall"]["is_control"] is True and "control" not in rep["overall"]
    assert not [a for a in rep["alerts"] if a["rule"] == "disagreement"]
    # The retrained candidate's disagreement alert fires, judged over the control.
    alerts = chat_report.report["candidates"]["retrained"]["models"]["support-chat"]["alerts"]
    firing = [a for a in alerts if a["rule"] == "disagreement" and a["state"] == "firing"]
    assert firing and "over the control 'control'" in firing[0]["message"]
    same = chat_report.report["candidates"]["same"]["models"]["support-chat"]["alerts"]
    assert not [a for a in same if a["rule"] == "disagreement"]


def test_text_drift_watches_answer_length_and_empty_answers(chat_report: Any) -> None:
    drift = chat_report.report["candidates"]["same"]["models"]["support-chat"]["overall"][
        "drift"]
    assert {"output.tokens", "output.chars", "output.empty", "candidate.tokens"} <= set(drift)


@pytest.fixture(scope="module")
def quote_report() -> Any:
    rows = [(q.request_id, q.inputs, q.segment)
            for q in itertools.islice(quotes.requests(seed=5), 3000)]
    messages = _recorded("shipping-quote", "shadow.sim.quotes:build_quotes", rows)
    return _replay(messages, quotes.TOLERANCES, "shadow.sim.quotes",
                   {"same": "build_quotes_same", "retrained": "build_quotes_retrained"},
                   "build_quotes_control")


def test_a_json_candidate_is_judged_field_by_field_with_the_noisy_field_ignored(
        quote_report: Any) -> None:
    same = quote_report.report["candidates"]["same"]["models"]["shipping-quote"]["overall"]
    assert same["disagreement_rate"] == 0.0  # the nonce differs always, and is ignored
    assert "mean_field:$.quote_nonce" not in same["divergence"]
    assert judge(_windows(quote_report, "same", "shipping-quote"), VERDICT).decision == \
        "PROMOTE"
    bad = quote_report.report["candidates"]["retrained"]["models"]["shipping-quote"]
    div = bad["overall"]["divergence"]
    # Parcels of 20 to 30 kg: a quarter of the uniform 0.2 to 40 kg.
    assert 0.2 < div["mean_field:$.service"] < 0.3
    assert div["mean_field:$.price"] == 0.0 and div["mean_field:$.eta_days"] == 0.0
    assert judge(_windows(quote_report, "retrained", "shipping-quote"), VERDICT).decision == \
        "ROLLBACK"
    top = quote_report.report["candidates"]["retrained"]["top"][0]
    assert top["diff"][0][:2] == ["$.service", "different"]


def test_replay_jobs_give_the_same_report_for_sampling_models(quote_report: Any) -> None:
    rows = [(q.request_id, q.inputs, q.segment)
            for q in itertools.islice(quotes.requests(seed=5), 600)]
    messages = _recorded("shipping-quote", "shadow.sim.quotes:build_quotes", rows)
    args = (messages, quotes.TOLERANCES, "shadow.sim.quotes", {"retrained":
                                                               "build_quotes_retrained"},
            "build_quotes_control")
    assert _replay(*args).json_bytes() == _replay(*args, jobs=2).json_bytes()


@pytest.mark.parametrize(("card", "words"), [
    ({"features": [{"field": "message", "tokens": 8}], "output": "text"}, "vocab: missing"),
    ({"features": [{"field": "x"}], "output": "json"}, "fields: missing"),
    ({"features": [{"field": "x"}], "output": "scalar", "fields": [{"name": "a"}]},
     "only for output"),
    ({"features": [{"field": "x"}], "output": "json", "fields": [{"nmae": "a"}]},
     "did you mean 'name'"),
    ({"features": [{"field": "m", "tokens": 4}], "output": "text", "vocab": "abca"},
     "appears twice"),
])
def test_a_text_or_json_card_mistake_is_one_line(card: dict[str, Any], words: str) -> None:
    from shadow.exceptions import ModelLoadError

    with pytest.raises(ModelLoadError, match=words) as info:
        ModelCard.parse(card, "card.toml")
    assert "\n" not in str(info.value)


def test_text_and_json_cards_encode_and_decode_as_documented() -> None:
    from shadow.runtime.models import CardAdapter

    text = CardAdapter(ModelCard.parse({"features": [{"field": "m", "tokens": 4}],
                                        "output": "text", "vocab": "ab "}, "t"))
    # id i + 1 is vocab[i]; 0 pads and stands for a character not in the vocab.
    assert text.featurize({"m": "ab?ba"}) == [1.0, 2.0, 0.0, 2.0]
    import torch

    assert text.answers(torch.tensor([[2.0, 3.0, 1.0, 0.0, 1.0]])) == [
        {"kind": "text", "value": "b a"}]
    doc = CardAdapter(ModelCard.parse({
        "features": [{"field": "x"}], "output": "json",
        "fields": [{"name": "quote.price", "digits": 2}, {"name": "tier",
                                                          "labels": ["a", "b"]},
                   {"name": "n", "digits": 0}]}, "j"))
    assert doc.answers(torch.tensor([[3.14159, 0.2, 0.7, 4.6]])) == [
        {"kind": "json", "value": {"quote": {"price": 3.14}, "tier": "b", "n": 5}}]
    with pytest.raises(TypeError, match=r"inputs\.m is not a string"):
        text.featurize({"m": 3})


def test_a_field_rule_that_names_no_field_is_said_in_the_report() -> None:
    from shadow.offline.report import html_report

    rows = [(q.request_id, q.inputs, q.segment)
            for q in itertools.islice(quotes.requests(seed=6), 1500)]
    messages = _recorded("shipping-quote", "shadow.sim.quotes:build_quotes", rows)
    rules = RuleSet.from_dict({"rules": [
        {"name": "price_changed", "metric": "divergence.mean_field:$.prcie", "threshold": 0.1,
         "min_samples": 10}]})
    join = JoinConfig(window_ms=WINDOW, grace_ms=1000, reference_size=200, rules=rules,
                      tolerances=Tolerances.from_dict(tomllib.loads(quotes.TOLERANCES)))
    result = replay(messages, [ReplayCandidate.from_spec(
        "v2", "shadow.sim.quotes:build_quotes_retrained")], join=join, batch=256)
    said = result.report["rule_warnings"]
    assert said == ["rule 'price_changed': divergence.mean_field:$.prcie matches no field of "
                    "shipping-quote (its fields: $.eta_days, $.price, $.service)"]
    assert "it can never fire" in html_report(result)
    # Without such a rule, the report has no such key (the same bytes as before).
    assert "rule_warnings" not in _replay(messages[:300], quotes.TOLERANCES,
                                          "shadow.sim.quotes", {}, "build_quotes_control"
                                          ).report
