"""Alert rules (loading, validation, metrics) and the per-rule state machine."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumers.alerting import AlertMachine, alert_id
from consumers.rules import (
    DEFAULT_RULES,
    Rule,
    RuleError,
    RuleSet,
    metric_feature,
    metric_value,
)
from schemas import ConfigError, WindowSummary

W = 60_000


def window(i: int, *, rate: float | None = 0.0, pairs: int = 1000, requests: int = 1000,
           unmatched: int = 0, errors: int = 0, psi: float = 0.01, p99: float = 0.1,
           model: str = "m", candidate: str = "c", segment: str | None = None
           ) -> WindowSummary:
    return WindowSummary.model_validate({
        "schema": "window.summary/1", "model": model, "candidate": candidate,
        "segment": segment, "ts": i * W + W, "window_start": i * W, "window_end": i * W + W,
        "requests": requests, "pairs": pairs - unmatched, "unmatched_shadow": unmatched,
        "candidate_errors": errors, "coverage": (pairs - unmatched) / requests,
        "disagreement_rate": rate, "divergence": {"p99": p99},
        "drift": {"inputs.amount": {"psi": psi, "js": 0.1}, "inputs.hour": {"psi": psi / 2}}})


def rules(**kw: Any) -> RuleSet:
    return RuleSet((Rule("r", "disagreement_rate", 0.05, clear_threshold=0.03, **kw),))


def run(machine: AlertMachine, rates: list[float | None], **kw: Any) -> list[tuple[str, str]]:
    out = []
    for i, rate in enumerate(rates):
        out += [(a.previous_state, a.state) for a in machine.evaluate(window(i, rate=rate, **kw),
                                                                        i)]
    return out


def test_pending_then_firing_then_resolved_with_hysteresis() -> None:
    m = AlertMachine(rules(for_windows=2))
    assert run(m, [0.01, 0.06, 0.07, 0.04, 0.035, 0.02, 0.01]) == [
        ("ok", "pending"), ("pending", "firing"), ("firing", "resolved")]
    # 0.04 and 0.035 are below the threshold but above the clear threshold: still firing.


def test_a_breach_that_stops_goes_back_and_a_single_window_rule_fires_at_once() -> None:
    m = AlertMachine(rules(for_windows=3))
    assert run(m, [0.06, 0.06, 0.01, 0.06]) == [("ok", "pending"), ("pending", "ok"),
                                                ("ok", "pending")]
    m = AlertMachine(rules(for_windows=1))
    assert run(m, [0.06, 0.02, 0.09, 0.1]) == [("ok", "firing"), ("firing", "resolved"),
                                               ("resolved", "firing")]


def test_small_or_empty_windows_change_nothing() -> None:
    m = AlertMachine(rules(for_windows=2, min_samples=500))
    assert run(m, [0.5, None, 0.5], pairs=100) == []
    assert run(AlertMachine(rules(for_windows=2)), [0.06, None, 0.06]) == [
        ("ok", "pending"), ("pending", "firing")]  # a window without the metric is skipped


def test_reprocessing_windows_repeats_no_alert_and_ids_are_stable() -> None:
    states: dict[str, Any] = {}
    first = AlertMachine(rules(for_windows=1), states)
    alerts = [a for i, r in enumerate([0.01, 0.2, 0.2]) for a in
              first.evaluate(window(i, rate=r), 0)]
    assert [a.state for a in alerts] == ["firing"]
    assert alerts[0].alert_id == alert_id("m", "c", "r", W, "firing")
    again = AlertMachine(rules(for_windows=1), states)  # a restart with the saved states
    assert [again.evaluate(window(i, rate=r), 0) for i, r in enumerate([0.01, 0.2, 0.2])] == \
        [[], [], []]


def test_alert_fields_and_segments_are_not_evaluated() -> None:
    m = AlertMachine(rules(for_windows=1, severity="critical"))
    assert m.evaluate(window(0, rate=0.3, segment="eu"), 5) == []
    (a,) = m.evaluate(window(0, rate=0.3), 5)
    assert (a.rule, a.severity, a.metric, a.value, a.threshold) == (
        "r", "critical", "disagreement_rate", 0.3, 0.05)
    assert (a.window_start, a.window_end, a.ts) == (0, W, 5)
    assert "0.3" in a.message and "ok -> firing" in a.message


def _tested(i: int, *, disagreements: int = 0, errors: int = 0, p_in: float = 0.5,
            p_out: float = 0.5, candidate: str = "c", p99: float = 0.1,
            unmatched: int = 0) -> WindowSummary:
    """A window as the join makes it for the shipped rules: counts for the sequential rules,
    test p-values and effects for the drift rules."""
    return window(i, rate=disagreements / 1000, errors=errors, p99=p99, unmatched=unmatched,
                  candidate=candidate).model_copy(update={
        "state": {"compared": 1000, "disagreements": disagreements},
        "drift": {"inputs.amount": {"p": p_in, "effect": 0.3},
                  "inputs.hour": {"p": 0.9, "effect": 0.01},
                  "output.confidence": {"p": 0.7, "effect": 0.02},
                  "candidate.confidence": {"p": p_out, "effect": 0.4}}})


def test_shipped_defaults_cover_the_issue_and_fire_on_their_metrics() -> None:
    names = {r.name: r for r in DEFAULT_RULES}
    assert set(names) == {"disagreement", "divergence_p99", "starved_shadow",
                          "candidate_errors", "input_drift", "output_drift"}
    assert (names["disagreement"].test, names["candidate_errors"].test) == ("cusum", "cusum")
    assert (names["input_drift"].scope, names["output_drift"].scope) == ("model", "candidate")
    m = AlertMachine(RuleSet())
    fired = set()
    for i in range(3):
        w = _tested(i, disagreements=50, errors=50, p_in=1e-9, p_out=1e-9, p99=0.9,
                    unmatched=300)
        fired |= {a.rule for a in m.evaluate(w, i) if a.state == "firing"}
    assert fired == set(names)


def test_shipped_defaults_stay_silent_on_healthy_windows() -> None:
    # A candidate at the sequential rules' baselines, with drift p-values well above the
    # thresholds: forty windows, not one alert.
    m = AlertMachine(RuleSet())
    alerts = [a for i in range(40)
              for a in m.evaluate(_tested(i, disagreements=2, errors=1, p_in=0.02), i)]
    assert alerts == []


def test_input_drift_is_judged_once_per_model_and_output_drift_per_candidate() -> None:
    m = AlertMachine(RuleSet())
    fired = [(a.rule, a.candidate) for c in ("a", "b")
             for a in m.evaluate(_tested(0, p_in=1e-9, p_out=1e-9 if c == "b" else 0.5,
                                         candidate=c), 0)]
    assert fired == [("input_drift", "*"), ("output_drift", "b")]
    [alert] = [a for a in m.evaluate(_tested(1, candidate="a"), 1)]
    assert (alert.rule, alert.candidate, alert.state) == ("input_drift", "*", "resolved")
    assert "inputs.amount" in _tested_message(1e-9)


def _tested_message(p: float) -> str:
    m = AlertMachine(RuleSet())
    return next(a.message for a in m.evaluate(_tested(0, p_in=p), 0))


def test_an_override_cannot_name_a_candidate_for_a_rule_judged_per_model() -> None:
    with pytest.raises(RuleError, match="once per model"):
        RuleSet.from_dict({"overrides": [{"rule": "input_drift", "candidate": "x",
                                          "threshold": 0.01}]})
    ok = RuleSet.from_dict({"overrides": [{"rule": "input_drift", "model": "m",
                                           "threshold": 0.01}]})
    assert {r.name: r for r in ok.for_pair("m", "*")}["input_drift"].threshold == 0.01


@pytest.mark.parametrize("table,why", [
    ({"metric": "drift.input.*.p", "comparison": "<="},
     r"'input' matches none of them; did you mean 'drift.inputs.\*.p'\?"),
    ({"metric": "drift.{inputs,outptu}.*.p", "comparison": "<="},
     r"did you mean 'drift.\{inputs,output\}.\*.p'\?"),
    ({"metric": "drift.inputs.*.p"}, "is a p-value.*comparison must be <="),
    ({"metric": "drift.inputs.*.p", "comparison": "<=", "scope": "modle"},
     r"scope must be 'candidate' or 'model', got 'modle' \(did you mean 'model'\?\)"),
    ({"metric": "drift.inputs.*.p", "comparison": "<=", "correction": "bhh"},
     r"did you mean 'bh'\?"),
])
def test_mistakes_in_a_drift_rule_are_refused_with_the_closest_name(
        table: dict[str, Any], why: str) -> None:
    with pytest.raises(RuleError, match=why):
        RuleSet.from_dict({"rules": [{"name": "x", "threshold": 0.01, **table}]})


def test_a_brace_group_matches_either_prefix() -> None:
    w = _tested(0, p_in=1e-9, p_out=1e-12)
    rule = Rule("d", "drift.{inputs,output}.*.p", 0.01, comparison="<=", correction="none")
    assert metric_value(w, rule.metric, rule) == 1e-9  # candidate.* is not matched
    assert metric_feature(w, rule.metric, rule) == "inputs.amount (p 1e-09, effect 0.3)"
    assert metric_value(w, "drift.{output,candidate}.*.psi") is None
    assert metric_value(w, "drift.{inputs,nothing}.amount.effect") == 0.3


def test_metric_values() -> None:
    w = window(0, rate=0.1, unmatched=100, errors=9, psi=0.4, p99=0.7)
    assert metric_value(w, "unmatched_rate") == 0.1
    assert metric_value(w, "candidate_error_rate") == 9 / 900
    assert metric_value(w, "drift.*.psi") == 0.4
    assert metric_value(w, "drift.inputs.hour.psi") == 0.2
    assert metric_value(w, "drift.inputs.none.psi") is None
    assert metric_value(w, "divergence.p99") == 0.7
    assert metric_value(w, "coverage") == 0.9


def test_input_drift_watches_the_inputs_and_names_the_feature() -> None:
    # The candidate's own answers drifting is not input drift: the shipped rule fired on
    # candidate.confidence while every input stayed put.
    w = window(0, psi=0.05).model_copy(update={"drift": {
        "inputs.amount": {"psi": 0.05}, "inputs.hour": {"psi": 0.31},
        "candidate.confidence": {"psi": 0.9}}})
    assert metric_value(w, "drift.inputs.*.psi") == 0.31
    assert metric_feature(w, "drift.inputs.*.psi") == "inputs.hour"
    assert metric_value(w, "drift.*.psi") == 0.9
    assert metric_value(w, "drift.candidate.*.psi") == 0.9
    m = AlertMachine(RuleSet.from_dict({"rules": [{"name": "input_drift", "for_windows": 1,
                                                   "metric": "drift.inputs.*.psi",
                                                   "threshold": 0.2}]}))
    [alert] = [a for a in m.evaluate(w, 0) if a.rule == "input_drift"]
    assert alert.state == "firing" and "0.31 on inputs.hour (>= 0.2)" in alert.message


def test_down_and_both_directions() -> None:
    coverage = RuleSet((Rule("cov", "coverage", 0.9, comparison="<", clear_threshold=0.95),))
    m = AlertMachine(coverage)
    fired = [a.state for i, u in enumerate([0, 200, 80, 10])
             for a in m.evaluate(window(i, unmatched=u), i)]
    assert fired == ["firing", "resolved"]  # 0.8 fires, 0.92 holds, 0.99 clears
    both = Rule("delta", "divergence.p99", 0.5, direction="both")
    assert both.breached(-0.6) and not both.breached(0.4)


def test_rules_file_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("""
[[rules]]
name = "disagreement"
metric = "disagreement_rate"
threshold = 0.1
[[rules]]
name = "slow"
metric = "latency.candidate_p99"
threshold = 50
severity = "info"
[[overrides]]
rule = "disagreement"
model = "m"
threshold = 0.02
[[overrides]]
rule = "disagreement"
model = "m"
candidate = "c"
for_windows = 3
""")
    rs = RuleSet.from_file(path)
    by_name = {r.name: r for r in rs.for_pair("m", "c")}
    assert by_name["disagreement"].threshold == 0.02 and by_name["disagreement"].for_windows == 3
    assert {r.name: r for r in rs.for_pair("other", "c")}["disagreement"].threshold == 0.1
    assert "slow" in by_name and "input_drift" in by_name  # defaults kept unless replaced


@pytest.mark.parametrize("text,message", [
    ('[[rules]]\nname = "x"\nmetric = "nope"\nthreshold = 1\n', "'x': unknown metric 'nope'"),
    ('[[rules]]\nname = "x"\nmetric = "coverage"\n', "'x': .*threshold"),
    ('[[rules]]\nname = "x"\nmetric = "coverage"\nthreshold = 1\ncomparison = "=="\n',
     "'x': comparison must be"),
    ('[[rules]]\nname = "x"\nmetric = "coverage"\nthreshold = 0.5\nclear_threshold = 0.6\n',
     "'x': clear_threshold 0.6 is on the firing side"),
    ('[[rules]]\nname = "x"\nmetric = "coverage"\nthreshold = 1\nfor_windows = 0\n',
     "'x': for_windows must be"),
    ('[[rules]]\nname = "x"\nmetric = "coverage"\nthreshold = 1\nseverity = "meh"\n',
     "'x': severity must be"),
    ('[[rules]]\nname = "x"\nmetric = "coverage"\nthreshold = 1\ncolour = "red"\n',
     "'x': unknown key 'colour'"),
    ('[[rules]]\nname = "x"\nmetric = "coverage"\ntreshold = 1\n',
     "'x': unknown key 'treshold' \\(did you mean 'threshold'\\?\\)"),
    ('[[rule]]\nname = "x"\n', "unknown key 'rule' \\(did you mean 'rules'\\?\\)"),
    ('[[rules]]\nname = "x"\nmetric = "latency.candidat_p99"\nthreshold = 50\n',
     "'x': unknown metric 'latency.candidat_p99'.*did you mean 'latency.candidate_p99'"),
    ('[[rules]]\nname = "x"\nmetric = "divergence.p95"\nthreshold = 1\n',
     "'x': unknown metric 'divergence.p95'.*p50, p90, p99"),
    ('[[rules]]\nname = "x"\nmetric = "drift.inputs.amount.pis"\nthreshold = 1\n',
     "did you mean 'drift.inputs.amount.psi'"),
    ('[[rules]]\nname = "x"\nmetric = "disagrement_rate"\nthreshold = 1\n',
     "did you mean 'disagreement_rate'"),
    ('[[overrides]]\nrule = "disagreement"\nmodle = "m"\nthreshold = 0.02\n',
     "'disagreement': unknown key 'modle' \\(did you mean 'model'\\?\\)"),
    ('[[overrides]]\nrule = "ghost"\nthreshold = 1\n', "'ghost': override of an unknown"),
    ('[[overrides]]\nrule = "disagreement"\nthreshold = "high"\n',
     "'disagreement': threshold must be a finite number"),
    ("[[rules]\n", "rules.toml: not TOML"),
])
def test_bad_rules_files_are_refused_with_the_rule_and_the_reason(
        tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        RuleSet.from_file(path)
    assert str(info.value).startswith(str(path))


def test_an_override_of_the_threshold_alone_keeps_the_rules_hysteresis() -> None:
    # The README's example: the shipped rule fires at 0.3 and clears at 0.2; an override to
    # 0.15 used to be refused ("clear_threshold 0.2 is on the firing side of 0.15").
    rs = RuleSet.from_dict({"overrides": [{"rule": "divergence_p99", "model": "fraud-scorer",
                                           "threshold": 0.15}]})
    rule = {r.name: r for r in rs.for_pair("fraud-scorer", "c")}["divergence_p99"]
    assert rule.threshold == 0.15 and rule.clear_threshold == pytest.approx(0.1)
    # A clear threshold given with it is taken as given, and still checked.
    with pytest.raises(RuleError, match="firing side"):
        RuleSet.from_dict({"overrides": [{"rule": "divergence_p99", "threshold": 0.15,
                                          "clear_threshold": 0.2}]})


def test_a_rate_written_as_a_cusum_threshold_is_refused_with_what_to_set() -> None:
    # The flat rule's habit, "threshold = 0.02" on the now sequential disagreement rule, would
    # fire on any window leaning towards the target.
    with pytest.raises(RuleError, match=r"evidence in nats.*set target"):
        RuleSet.from_dict({"overrides": [{"rule": "disagreement", "model": "fraud-scorer",
                                          "threshold": 0.02}]})
    rs = RuleSet.from_dict({"overrides": [{"rule": "disagreement", "model": "fraud-scorer",
                                           "target": 0.005}]})
    rule = {r.name: r for r in rs.for_pair("fraud-scorer", "c")}["disagreement"]
    assert (rule.baseline, rule.target, rule.threshold) == (0.002, 0.005, 7.0)


@given(st.lists(st.one_of(st.none(), st.floats(0, 1)), max_size=40),
       st.integers(1, 4))
def test_the_machine_only_makes_legal_transitions(rates: list[float | None], n: int) -> None:
    legal = {("ok", "pending"), ("ok", "firing"), ("pending", "firing"), ("pending", "ok"),
             ("firing", "resolved"), ("resolved", "pending"), ("resolved", "firing"),
             ("pending", "resolved")}
    transitions = run(AlertMachine(rules(for_windows=n)), rates)
    assert set(transitions) <= legal
    state = "ok"
    for before, after in transitions:  # a chain: each alert starts where the last ended
        assert before == state
        state = after


def test_a_drift_rule_on_a_feature_the_model_lacks_is_reported_once(
        caplog: pytest.LogCaptureFixture) -> None:
    m = AlertMachine(RuleSet.from_dict({"rules": [{"name": "amount", "threshold": 0.2,
                                                   "metric": "drift.inputs.amnt.psi"}]}))
    with caplog.at_level("WARNING", logger="shadowstream.join"):
        for i in range(3):
            m.evaluate(window(i, psi=0.9), i)
    warned = [r.message for r in caplog.records if "matches no feature" in r.message
              and r.message.startswith("rule 'amount'")]
    assert warned == ["rule 'amount': drift.inputs.amnt.psi matches no feature of m (its "
                      "features: inputs.amount, inputs.hour)"]


def test_drift_as_a_test_corrects_for_the_features_and_names_those_that_moved() -> None:
    import scipy.stats as sps

    drift = {"inputs.a": {"p": 0.001, "effect": 0.20}, "inputs.b": {"p": 0.004, "effect": 0.10},
             "inputs.c": {"p": 0.30, "effect": 0.02}, "inputs.d": {"p": 0.0001, "effect": 0.01},
             "candidate.confidence": {"p": 1e-9, "effect": 0.5}}
    w = window(0).model_copy(update={"drift": drift})
    bh = Rule("input_drift", "drift.inputs.*.p", 0.01, comparison="<=", clear_threshold=0.05,
              min_samples=0)
    # Benjamini-Hochberg over the four inputs (not the candidate's own answers), as scipy.
    want = sps.false_discovery_control([0.001, 0.004, 0.30, 0.0001])
    assert metric_value(w, bh.metric, bh) == pytest.approx(min(want))
    # An effect floor: inputs.d's tiny effect cannot move, yet it still counts in the
    # correction (m = 4): BH gives inputs.a 4 x 0.001 / 1 and inputs.b 4 x 0.004 / 2,
    # Bonferroni 4 x 0.001 and 4 x 0.004.
    floor = Rule("f", "drift.inputs.*.p", 0.01, comparison="<=", min_effect=0.05)
    assert metric_value(w, floor.metric, floor) == pytest.approx(0.004)
    bonf = Rule("f", "drift.inputs.*.p", 0.01, comparison="<=", min_effect=0.05,
                correction="bonferroni")
    assert metric_value(w, bonf.metric, bonf) == pytest.approx(0.004)
    assert metric_feature(w, bonf.metric, bonf) == "inputs.a (p 0.004, effect 0.2)"
    assert metric_feature(w, floor.metric, floor) == (
        "inputs.a (p 0.004, effect 0.2), inputs.b (p 0.008, effect 0.1)")
    [alert] = AlertMachine(RuleSet((floor,))).evaluate(w, 0)
    assert alert.state == "firing" and "on inputs.a (p 0.004, effect 0.2), inputs.b" in \
        alert.message
    # Nothing below the threshold: the value is still the smallest corrected p, no name.
    calm = window(1).model_copy(update={"drift": {"inputs.a": {"p": 0.5, "effect": 0.3}}})
    assert metric_value(calm, floor.metric, floor) == 0.5
    assert metric_feature(calm, floor.metric, floor) is None
    with pytest.raises(ConfigError, match="correction must be"):
        Rule("x", "drift.*.p", 0.01, comparison="<=", correction="holm")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="min_effect"):
        Rule("x", "drift.*.p", 0.01, comparison="<=", min_effect=2)


def _counted(i: int, compared: int, disagreements: int) -> WindowSummary:
    return window(i, rate=disagreements / compared).model_copy(update={"state": {
        "compared": compared, "disagreements": disagreements}})


def test_a_cusum_rule_accumulates_evidence_across_windows() -> None:
    import math

    from consumers.rules import evidence_step

    rule = Rule("disagreement", "disagreement_rate", 7.0, clear_threshold=1.0, test="cusum",
                baseline=0.002, target=0.01, min_samples=100)
    m = AlertMachine(RuleSet((rule,)))
    # 1 % of 500 a window: each adds 5 ln 5 + 495 ln(0.99/0.998); no single window reaches 7.
    step = 5 * math.log(5) + 495 * math.log(0.99 / 0.998)
    assert evidence_step(5, 500, 0.002, 0.01) == pytest.approx(step) and 0 < step < 7
    states = [[a.state for a in m.evaluate(_counted(i, 500, 5), i)] for i in range(3)]
    assert states == [[], ["firing"], []]  # evidence 4.1, then 8.1 >= 7, then 12.2
    assert m.evaluate(_counted(3, 500, 0), 3) == []  # a clean window: 8.2, above 1
    assert m.evaluate(_counted(3, 500, 50), 4) == []  # the same window again: not counted
    key = "m|c|disagreement"
    assert m.states[key]["evidence"] == pytest.approx(max(0.0, 3 * step + evidence_step(
        0, 500, 0.002, 0.01)))
    later = [[a.state for a in m.evaluate(_counted(i, 500, 0), i)] for i in range(4, 7)]
    assert later == [[], ["resolved"], []]  # 4.2, then 0.2 < 1: resolved; floored at 0
    [alert] = AlertMachine(RuleSet((replace(rule, for_windows=1),))).evaluate(
        _counted(0, 500, 25), 0)  # 5 %: 25 ln 5 - 475 x 0.008 = 36.4 nats in one window
    assert alert.state == "firing" and "evidence 36.4 nats that it is 0.01 rather than " \
        "0.002 (this window 25/500)" in alert.message


def test_cusum_rules_are_checked() -> None:
    with pytest.raises(ConfigError, match="needs 0 < baseline < target < 1"):
        Rule("d", "disagreement_rate", 7.0, test="cusum", baseline=0.02, target=0.01)
    with pytest.raises(ConfigError, match="needs a rate of counts"):
        Rule("d", "coverage", 7.0, test="cusum", baseline=0.1, target=0.2)
    with pytest.raises(ConfigError, match="go with test = cusum"):
        Rule("d", "disagreement_rate", 0.05, baseline=0.01)
    with pytest.raises(ConfigError, match="test must be"):
        Rule("d", "disagreement_rate", 0.05, test="sprt")  # type: ignore[arg-type]
