"""A control (a second copy of the live model) through the join's code: windows carry it
beside each candidate, the rules and the verdict judge the excess over it, it survives a
restart of the join, and without one everything is as before."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest

from consumers.join import JoinConfig, JoinCore
from consumers.rules import Rule, RuleSet, metric_value
from consumers.verdict import JudgeConfig, MetricCheck, judge, rate_interval
from consumers.windows import with_controls
from schemas import WindowSummary

REQ, OUT = "t.requests", "t.outputs"
WINDOW = 10_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % WINDOW


def _request(i: int, ts: int) -> dict[str, Any]:
    return {"schema": "mirror.request/1", "request_id": f"r{i}", "model": "m", "ts": ts,
            "inputs": {"x": float(i % 7)},
            "live": {"version": "v1", "latency_ms": 2.0,
                     "output": {"kind": "text", "value": "the parcel ships on monday"}}}


def _output(i: int, ts: int, cand: str, text: str, control: bool = False) -> dict[str, Any]:
    doc = {"schema": "shadow.output/1", "request_id": f"r{i}", "model": "m", "ts": ts,
           "candidate": cand, "latency_ms": 1.0, "output": {"kind": "text", "value": text}}
    if control:
        doc["control"] = True
    return doc


SAME, OTHER = "the parcel ships on monday", "a parcel shipped last tuesday"


def _feed(core: JoinCore, n: int, start: int = 0) -> list[Any]:
    """n requests over three windows: the control disagrees on every 4th, "good" on every
    4th too (other requests), "bad" on every 2nd."""
    out: list[Any] = []
    for i in range(start, start + n):
        ts = T0 + i * (3 * WINDOW // 300)
        out += core.handle(REQ, 0, i, f"r{i}".encode(), orjson.dumps(_request(i, ts)))
        for cand, disagree, control in (("ctl", i % 4 == 0, True), ("good", i % 4 == 1, False),
                                        ("bad", i % 2 == 0, False)):
            doc = _output(i, ts, cand, OTHER if disagree else SAME, control)
            out += core.handle(OUT, 0, 3 * i + ("ctl", "good", "bad").index(cand),
                               f"r{i}".encode(), orjson.dumps(doc))
    return out


def _end(core: JoinCore) -> list[Any]:
    """Everything written, and every window closed (as a replay's end closes them)."""
    out = core.flush(close=False)
    core.sweep(2**62, out)
    return out


def _config(**kw: Any) -> JoinConfig:
    return JoinConfig(window_ms=WINDOW, grace_ms=1_000, reference_size=20, **kw)


def _windows(out: list[Any]) -> list[WindowSummary]:
    return [o.record for o in out if o.role == "windows" and o.record.segment is None]


def test_each_candidate_window_carries_the_control_beside_it() -> None:
    core = JoinCore(_config(), {}, REQ, OUT, clock=lambda: 0)
    out = _feed(core, 300) + _end(core)
    windows = _windows(out)
    ctl = [w for w in windows if w.candidate == "ctl"]
    assert len(ctl) == 3 and all(w.is_control and w.control is None for w in ctl)
    for w in windows:
        if w.candidate == "ctl":
            continue
        mine = next(c for c in ctl if c.window_start == w.window_start)
        assert w.control is not None and w.control.candidate == "ctl"
        assert w.control.disagreement_rate == mine.disagreement_rate
        assert w.control.compared == mine.state["compared"]
        assert w.control.excess_disagreement_rate == pytest.approx(
            w.disagreement_rate - mine.disagreement_rate)
        assert w.control.divergence == mine.divergence
    good = [w for w in windows if w.candidate == "good"]
    assert all(abs(w.control.excess_disagreement_rate) < 0.02 for w in good)
    bad = [w for w in windows if w.candidate == "bad"]
    assert all(w.control.excess_disagreement_rate > 0.2 for w in bad)


def test_without_a_control_the_windows_are_as_before() -> None:
    core = JoinCore(_config(), {}, REQ, OUT, clock=lambda: 0)
    out = []
    for i in range(100):
        ts = T0 + i * 100
        out += core.handle(REQ, 0, i, f"r{i}".encode(), orjson.dumps(_request(i, ts)))
        out += core.handle(OUT, 0, i, f"r{i}".encode(), orjson.dumps(_output(i, ts, "c", SAME)))
    windows = _windows(out + _end(core))
    assert windows and all(w.control is None and w.is_control is None for w in windows)
    assert "control" not in windows[0].state
    assert with_controls(windows) == windows


def test_a_restarted_join_still_knows_its_control() -> None:
    table: dict[str, Any] = {}
    first = JoinCore(_config(), table, REQ, OUT, clock=lambda: 0)
    _feed(first, 150)
    first.flush(close=False)
    again = JoinCore(_config(), table, REQ, OUT, clock=lambda: 0)
    again.recover()
    windows = _windows(_feed(again, 150, start=150) + _end(again))
    # The window of requests 100 to 199 was open across the restart: its entries from
    # before it came back from the table, with their control flag.
    assert [w.candidate for w in windows if w.is_control] == ["ctl"] * 2
    assert windows[0].window_start == T0 + WINDOW
    assert all(w.control is not None for w in windows if w.candidate != "ctl")


def _summary(rate: float | None, control_rate: float | None, p99: float = 0.5,
             control_p99: float = 0.4, compared: int = 1000) -> WindowSummary:
    doc: dict[str, Any] = {
        "model": "m", "candidate": "c", "ts": 0, "window_start": 0, "window_end": WINDOW,
        "requests": compared, "pairs": compared, "disagreement_rate": rate,
        "divergence": {"p99": p99, "mean_field:$.status": 0.3},
        "state": {"compared": compared, "disagreements": round((rate or 0) * compared)}}
    if control_rate is not None:
        doc["control"] = {"candidate": "ctl", "compared": compared,
                          "disagreements": round(control_rate * compared),
                          "disagreement_rate": control_rate,
                          "excess_disagreement_rate": rate - control_rate,
                          "divergence": {"p99": control_p99}}
    return WindowSummary.model_validate(doc)


def test_rules_read_the_excess_over_the_control() -> None:
    with_ctl, without = _summary(0.30, 0.26), _summary(0.30, None)
    assert metric_value(without, "disagreement_rate") == 0.30
    assert metric_value(with_ctl, "disagreement_rate") == pytest.approx(0.04)
    assert metric_value(with_ctl, "divergence.p99") == pytest.approx(0.1)
    # A field the control never had differed in none of its answers.
    assert metric_value(with_ctl, "divergence.mean_field:$.status") == pytest.approx(0.3)
    assert metric_value(with_ctl, "requests") == 1000  # counts are not excesses


def test_a_cusum_rule_measures_its_evidence_over_the_control_rate() -> None:
    from consumers.alerting import AlertMachine

    rule = Rule("disagreement", "disagreement_rate", 7.0, clear_threshold=1.0,
                min_samples=100, test="cusum", baseline=0.002, target=0.01)
    machine = AlertMachine(RuleSet((rule,)))
    # The candidate disagrees as often as the control: no evidence, however noisy both are.
    quiet = [machine.evaluate(_summary(0.26, 0.26).model_copy(
        update={"window_start": i * WINDOW}), 0) for i in range(20)]
    assert not any(quiet)
    # 3 % above the control, window after window: it fires, and says over what.
    loud = AlertMachine(RuleSet((rule,)))
    fired = [a for i in range(12) for a in loud.evaluate(_summary(0.29, 0.26).model_copy(
        update={"window_start": i * WINDOW}), 0)]
    assert fired and fired[-1].state == "firing"
    assert "over the control 'ctl'" in fired[-1].message


def test_the_control_raises_no_divergence_alert_of_its_own() -> None:
    from consumers.alerting import AlertMachine

    rules = RuleSet((Rule("dis", "disagreement_rate", 0.05, min_samples=10),
                     Rule("err", "candidate_error_rate", 0.05, min_samples=10)))
    noisy = _summary(0.3, None).model_copy(update={"is_control": True, "candidate_errors": 100})
    alerts = AlertMachine(rules).evaluate(noisy, 0)
    assert [a.rule for a in alerts] == ["err"]  # errors are still its own


def test_the_verdict_judges_the_excess_by_newcombes_interval() -> None:
    windows = [_summary(0.28, 0.26).model_dump() for _ in range(4)]
    config = JudgeConfig(metrics=(MetricCheck("disagreement_rate", critical=True,
                                              limit=0.05),), since_change=False)
    v = judge(windows, config)
    r = v.results[0]
    # By hand: each rate's own interval at alpha over one test, combined.
    alpha = 0.05
    k1, k0, n = 1120, 1040, 4000
    l1, u1 = rate_interval(k1, n, alpha)
    l0, u0 = rate_interval(k0, n, alpha)
    d = (k1 - k0) / n
    lo = d - math.sqrt((k1 / n - l1) ** 2 + (u0 - k0 / n) ** 2)
    hi = d + math.sqrt((u1 - k1 / n) ** 2 + (k0 / n - l0) ** 2)
    assert r.interval == pytest.approx((lo, hi)) and r.candidate == pytest.approx(d)
    assert r.live == pytest.approx(0.26)  # the control's rate beside it
    assert r.outcome == "pass" and v.decision == "PROMOTE" and "control 'ctl'" in r.reason
    # The same windows without their control: 28 % against 5 % rolls back.
    raw = [{k: v for k, v in w.items() if k != "control"} for w in windows]
    assert judge(raw, config).decision == "ROLLBACK"
    far = [_summary(0.40, 0.26).model_dump() for _ in range(4)]
    assert judge(far, config).decision == "ROLLBACK"


def test_a_json_exemplar_names_the_fields_that_differed() -> None:
    core = JoinCore(_config(), {}, REQ, OUT, clock=lambda: 0)
    live = {"status": "ok", "price": 10.0, "nonce": 1}
    out: list[Any] = []
    for i in range(30):
        ts = T0 + i * 100
        req = _request(i, ts)
        req["live"]["output"] = {"kind": "json", "value": live}
        cand = {**live, "status": "held" if i % 3 == 0 else "ok", "nonce": 2}
        doc = _output(i, ts, "c", "")
        doc["output"] = {"kind": "json", "value": cand}
        out += core.handle(REQ, 0, i, f"r{i}".encode(), orjson.dumps(req))
        out += core.handle(OUT, 0, i, f"r{i}".encode(), orjson.dumps(doc))
    out += _end(core)
    top = next(o.record["top"] for o in out if o.role == "exemplars")
    assert top[0][2] == ["$.nonce", "$.status"] and len(top[0]) == 3
    assert all(row[2] == ["$.nonce"] for row in top if row[1] < top[0][1])
    window = _windows(out)[0]
    assert window.divergence["mean_field:$.status"] == pytest.approx(10 / 30)
    assert window.divergence["mean_field:$.price"] == 0.0


def test_an_alert_rule_can_watch_one_json_field() -> None:
    from consumers.alerting import AlertMachine
    from consumers.rules import RuleError

    rules = RuleSet.from_dict({"rules": [{
        "name": "status_changed", "metric": "divergence.mean_field:$.status",
        "comparison": ">=", "threshold": 0.2, "min_samples": 100, "severity": "critical"}]})
    alerts = [a for a in AlertMachine(rules).evaluate(_summary(0.3, None), 0)
              if a.rule == "status_changed"]  # beside the shipped rules
    assert [(a.state, a.value) for a in alerts] == [("firing", 0.3)]
    with pytest.raises(RuleError, match="unknown metric"):
        RuleSet.from_dict({"rules": [{"name": "x", "metric": "divergence.mean_feild:$.a",
                                      "threshold": 0.2}]})


@pytest.mark.parametrize("metric", ["divergence.mean_field:status",
                                    "divergence.mean_feild:$.status",
                                    "divergence.mean_field:$.a..b"])
def test_a_field_rule_with_a_malformed_path_is_refused(metric: str) -> None:
    from consumers.rules import RuleError

    with pytest.raises(RuleError, match=r"divergence\.mean_field:<path>, the path from \$"):
        RuleSet.from_dict({"rules": [{"name": "x", "metric": metric, "threshold": 0.2}]})


def test_a_field_rule_naming_no_field_of_the_answers_is_said_once(
        caplog: pytest.LogCaptureFixture) -> None:
    from consumers.alerting import AlertMachine

    rules = RuleSet((Rule("typo", "divergence.mean_field:$.staus", 0.2, min_samples=10),))
    machine = AlertMachine(rules)
    with caplog.at_level("WARNING", logger="shadowstream.join"):
        for i in range(3):
            machine.evaluate(_summary(0.3, None).model_copy(
                update={"window_start": i * WINDOW}), 0)
    said = [r.getMessage() for r in caplog.records if "typo" in r.getMessage()]
    assert len(said) == 1 and "matches no field of m (its fields: $.status)" in said[0]
