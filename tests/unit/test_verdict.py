"""The verdict: rates by their confidence interval, the windows since a change judged again,
Bonferroni over the tests, Mann-Whitney with an effect bound for latency, minimum data."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats as sps

from consumers.verdict import JudgeConfig, MetricCheck, judge, rate_interval
from schemas import ShadowstreamError

RNG = np.random.default_rng(11)


def windows(n: int = 8, *, disagree: float = 0.0, errors: int = 0, live_p99: float = 20.0,
            cand_p99: float = 20.0, pairs: int = 500, psi: float = 0.03,
            late: tuple[int, float] | None = None) -> list[dict[str, Any]]:
    """``n`` windows; ``late = (i, rate)``: the disagreement rate from window ``i`` on."""
    out = []
    for i in range(n):
        rate = late[1] if late is not None and i >= late[0] else disagree
        out.append({"window_start": i * 10_000, "pairs": pairs, "requests": pairs,
                    "candidate_errors": errors, "disagreement_rate": rate,
                    "state": {"compared": pairs - errors,
                              "disagreements": round(rate * (pairs - errors))},
                    "latency": {"live_p99": live_p99 * RNG.uniform(0.9, 1.1),
                                "candidate_p99": cand_p99 * RNG.uniform(0.9, 1.1)},
                    "drift": {"output.confidence": {"psi": 0.02},
                              "candidate.confidence": {"psi": psi * RNG.uniform(0.8, 1.2)}}})
    return out


def outcomes(v: Any, scope: str = "all") -> dict[str, str]:
    return {r.metric: r.outcome for r in v.results if r.scope == scope}


def test_an_equal_candidate_is_promoted_on_the_whole_run_and_has_no_change() -> None:
    v = judge(windows(40))
    assert (v.decision, v.exit_code) == ("PROMOTE", 0)
    assert outcomes(v) == {"disagreement_rate": "pass", "candidate_error_rate": "pass",
                           "latency_p99": "pass", "output_psi": "pass"}
    # Latency is compared with live window by window: no change point of its own.
    assert outcomes(v, "since change") == {"disagreement_rate": "pass",
                                           "candidate_error_rate": "pass",
                                           "output_psi": "pass"}
    assert "none, the later windows are no worse" in v.results[-1].reason


def test_five_percent_disagreement_rolls_back_or_holds_as_configured() -> None:
    v = judge(windows(disagree=0.05))
    assert (v.decision, v.exit_code) == ("ROLLBACK", 2)
    assert re.search(r"disagreement_rate \(8 windows\): 200/4,000 = 5 %, 98.6 % interval "
                     r"4.193 % to 5.907 %, above the limit 2 %", v.reason)
    lenient = JudgeConfig(metrics=(MetricCheck("disagreement_rate", critical=False,
                                               limit=0.02),))
    assert judge(windows(disagree=0.05), lenient).decision == "HOLD"


@given(st.integers(1, 5000), st.data(), st.sampled_from(["exact", "wilson"]),
       st.floats(0.001, 0.1))
def test_rate_intervals_are_scipys(n: int, data: st.DataObject, method: str,
                                   alpha: float) -> None:
    k = data.draw(st.integers(0, n))
    want = sps.binomtest(k, n).proportion_ci(1 - 2 * alpha, method=method)
    assert rate_interval(k, n, alpha, method) == pytest.approx((want.low, want.high))
    if method == "exact" and 0 < k < n:  # each bound one-sided at alpha (Clopper-Pearson)
        assert sps.binom.sf(k - 1, n, want.low) == pytest.approx(alpha, rel=1e-6)
        assert sps.binom.cdf(k, n, want.high) == pytest.approx(alpha, rel=1e-6)


def test_a_rate_at_the_limit_is_inconclusive_and_holds_rather_than_a_coin_flip() -> None:
    v = judge(windows(disagree=0.02))
    assert v.decision == "HOLD" and outcomes(v)["disagreement_rate"] == "inconclusive"
    assert "across the limit 2 %" in v.reason
    # With more pairs the same rate just under the limit is settled: it passes.
    assert judge(windows(40, pairs=5000, disagree=0.018)).decision == "PROMOTE"


def test_a_candidate_that_degrades_late_is_not_averaged_away() -> None:
    # 2 % disagreement after window 10 of 40: 1.5 % over the run, under the 2 % limit.
    v = judge(windows(40, late=(10, 0.02)))
    assert outcomes(v)["disagreement_rate"] == "pass"
    since = next(r for r in v.results if r.scope == "since change"
                 and r.metric == "disagreement_rate")
    assert (since.outcome, since.windows) == ("inconclusive", 30)
    assert v.decision == "HOLD" and "since window 11 of 40, worse from there" in v.reason
    # Worse late: the windows since the change alone roll it back.
    v = judge(windows(40, late=(30, 0.06)))
    assert outcomes(v)["disagreement_rate"] == "pass" and v.decision == "ROLLBACK"
    assert "since window 31 of 40" in v.reason
    # Worse late but still well under the limit: promoted, the change said.
    v = judge(windows(40, pairs=2000, late=(20, 0.004)))
    assert v.decision == "PROMOTE"
    assert outcomes(v, "since change")["disagreement_rate"] == "pass"
    # since_change = false: the whole run only, as before.
    config = JudgeConfig(since_change=False)
    assert judge(windows(40, late=(10, 0.02)), config).decision == "PROMOTE"


def test_the_change_point_is_fishers_best_split_corrected_for_the_splits() -> None:
    ws = windows(12, late=(8, 0.03))
    v = judge(ws, JudgeConfig(metrics=(MetricCheck("disagreement_rate", limit=0.05),)))
    since = v.results[-1]
    splits = range(3, 10)  # both sides at least min_windows = 3 windows
    k = [round(0.03 * 500) if i >= 8 else 0 for i in range(12)]
    best = min(sps.fisher_exact([[sum(k[s:]), 500 * (12 - s) - sum(k[s:])],
                                 [sum(k[:s]), 500 * s - sum(k[:s])]],
                                alternative="greater").pvalue for s in splits)
    assert since.p_value == pytest.approx(best * len(splits))
    assert since.windows == 4 and since.candidate == pytest.approx(0.03)


def test_every_test_is_made_at_alpha_over_the_number_of_tests() -> None:
    v = judge(windows(40, disagree=0.01))
    tests = len(v.results)
    assert tests == 7  # four metrics, three of them one-sided and looked at since a change
    r = next(r for r in v.results if r.metric == "disagreement_rate" and r.scope == "all")
    assert r.interval == pytest.approx(rate_interval(200, 20_000, 0.05 / tests))
    two_tests = JudgeConfig(metrics=(MetricCheck("disagreement_rate", limit=0.02),))
    r = next(r for r in judge(windows(40, disagree=0.01), two_tests).results
             if r.scope == "all")
    assert r.interval == pytest.approx(rate_interval(200, 20_000, 0.05 / 2))


def test_slower_candidate_holds_only_beyond_the_effect_bound() -> None:
    slow = judge(windows(cand_p99=30.0))  # +50 %, allowed +20 %
    assert slow.decision == "HOLD" and "latency_p99" in slow.reason
    result = next(r for r in slow.results if r.metric == "latency_p99")
    assert result.p_value is not None and result.p_value < 0.05 / len(slow.results)
    a_bit = judge(windows(cand_p99=22.0))  # +10 %: significant, within the bound
    assert a_bit.decision == "PROMOTE"
    ws = windows(cand_p99=30.0)
    expected = sps.mannwhitneyu([w["latency"]["candidate_p99"] for w in ws],
                                [w["latency"]["live_p99"] for w in ws]).pvalue
    got = next(r for r in judge(ws).results if r.metric == "latency_p99").p_value
    assert got == pytest.approx(expected)


def test_answers_unlike_the_live_ones_hold_by_the_t_interval_of_their_psi() -> None:
    ws = windows(20, psi=0.3)
    v = judge(ws)
    r = next(r for r in v.results if r.metric == "output_psi" and r.scope == "all")
    values = [w["drift"]["candidate.confidence"]["psi"] for w in ws]
    half = sps.t.ppf(1 - 0.05 / 7, 19) * np.std(values, ddof=1) / np.sqrt(20)
    assert r.interval == pytest.approx((np.mean(values) - half, np.mean(values) + half))
    assert r.outcome == "fail" and v.decision == "HOLD"


def test_a_slower_candidate_on_too_few_windows_to_tell_holds_rather_than_passes() -> None:
    # Mann-Whitney on 4 against 4 windows cannot reach alpha / 7: +300 % was a "pass".
    v = judge(windows(4, cand_p99=80.0))
    r = next(r for r in v.results if r.metric == "latency_p99")
    assert r.outcome == "inconclusive" and v.decision == "HOLD"
    assert re.search(r"candidate median [\d.]+ ms vs live [\d.]+ ms \(\+\d+% worse, allowed "
                     r"20%; Mann-Whitney p=0.0286 >= 0.00714\)", r.reason)


def test_what_has_no_data_is_said_as_such() -> None:
    # No candidate latency (a replay without --latency) and no answer drift: the headline
    # names the metrics without data over the run, the reasons say where latency comes from.
    ws = windows(8)
    for w in ws:
        del w["latency"]["candidate_p99"], w["drift"]["candidate.confidence"]
    v = judge(ws)
    assert v.decision == "PROMOTE"
    assert v.reason == "every metric with data passed (no data: latency_p99, output_psi)"
    latency = next(r for r in v.results if r.metric == "latency_p99")
    assert "a replay measures it with --latency" in latency.reason
    assert {r.metric: r.outcome for r in v.results if r.scope == "since change"}[
        "output_psi"] == "no data"
    short = judge(windows(4))
    assert "it needs 6, min_windows on each side" in short.results[-1].reason
    assert short.reason == "every metric passed"  # only the since-change checks lack data
    # A PSI interval does not reach below 0.
    psi = next(r for r in judge(windows(8, psi=0.001)).results if r.metric == "output_psi")
    assert psi.interval is not None and psi.interval[0] >= 0


def test_not_enough_data_is_a_hold_before_anything_else() -> None:
    v = judge(windows(2, disagree=0.5))
    assert v.decision == "HOLD" and v.reason.startswith("not enough data") and not v.results
    assert judge(windows(5, pairs=50)).decision == "HOLD"


def test_config_file(tmp_path: Path) -> None:
    path = tmp_path / "verdict.toml"
    path.write_text('min_windows = 2\nsince_change = false\ninterval = "wilson"\n'
                    '[[metrics]]\nmetric = "disagreement_rate"\ncritical = false\n'
                    'limit = 0.1\n')
    config = JudgeConfig.from_file(path)
    assert (config.min_windows, config.since_change, config.interval) == (2, False, "wilson")
    assert judge(windows(4, disagree=0.05), config).decision == "PROMOTE"
    # A table changes the default check of its metric: what it leaves out stays.
    path.write_text('[[metrics]]\nmetric = "disagreement_rate"\nlimit = 0.011\n')
    check = {m.metric: m for m in JudgeConfig.from_file(path).metrics}["disagreement_rate"]
    assert (check.limit, check.critical) == (0.011, True)
    with pytest.raises(ShadowstreamError, match="needs a limit"):
        MetricCheck("output_psi")
    for bad, why in (('[[metrics]]\nmetric = "nope"\n', "unknown"),
                     ('[[metrics]]\nmetric = "latency_p99"\nlimit = "20 %"\n',
                      "limit"),
                     ("since_change = 1\n", "true or false"),
                     ('[[metrics]]\nmetric = "output_psi"\nlimit = 0.2\nsince_change = false\n',
                      "top-level setting.*above the first"),
                     ('interval = "wilsn"\n', "exact or wilson")):
        path.write_text(bad)
        with pytest.raises(ShadowstreamError, match=why):
            JudgeConfig.from_file(path)
