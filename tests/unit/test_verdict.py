"""The verdict: Mann-Whitney per metric with an effect bound, critical metrics, minimum data."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps

from consumers.verdict import JudgeConfig, MetricCheck, judge
from schemas import ShadowstreamError

RNG = np.random.default_rng(11)


def windows(n: int = 8, *, disagree: float = 0.0, errors: int = 0, live_p99: float = 20.0,
            cand_p99: float = 20.0, pairs: int = 500) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        out.append({"pairs": pairs, "requests": pairs, "candidate_errors": errors,
                    "disagreement_rate": disagree,
                    "latency": {"live_p99": live_p99 * RNG.uniform(0.9, 1.1),
                                "candidate_p99": cand_p99 * RNG.uniform(0.9, 1.1)},
                    "drift": {"output.confidence": {"psi": 0.02},
                              "candidate.confidence": {"psi": 0.03}}})
    return out


def test_an_equal_candidate_is_promoted() -> None:
    v = judge(windows())
    assert (v.decision, v.exit_code) == ("PROMOTE", 0)
    assert {r.metric: r.outcome for r in v.results} == {
        "disagreement_rate": "pass", "candidate_error_rate": "pass", "latency_p99": "pass",
        "output_psi": "pass"}


def test_five_percent_disagreement_rolls_back_or_holds_as_configured() -> None:
    v = judge(windows(disagree=0.05))
    assert (v.decision, v.exit_code) == ("ROLLBACK", 2)
    assert re.search(r"disagreement_rate: mean over \d+ windows 0.05 above the limit 0.02",
                     v.reason)
    lenient = JudgeConfig(metrics=(MetricCheck("disagreement_rate", critical=False,
                                               limit=0.02),))
    assert judge(windows(disagree=0.05), lenient).decision == "HOLD"


def test_slower_candidate_holds_only_beyond_the_effect_bound() -> None:
    slow = judge(windows(cand_p99=30.0))  # +50 %, allowed +20 %
    assert slow.decision == "HOLD" and "latency_p99" in slow.reason
    result = next(r for r in slow.results if r.metric == "latency_p99")
    assert result.p_value is not None and result.p_value < 0.05
    a_bit = judge(windows(cand_p99=22.0))  # +10 %: significant, within the bound
    assert a_bit.decision == "PROMOTE"
    ws = windows(cand_p99=30.0)
    expected = sps.mannwhitneyu([w["latency"]["candidate_p99"] for w in ws],
                                [w["latency"]["live_p99"] for w in ws]).pvalue
    got = next(r for r in judge(ws).results if r.metric == "latency_p99").p_value
    assert got == pytest.approx(expected)


def test_not_enough_data_is_a_hold_before_anything_else() -> None:
    v = judge(windows(2, disagree=0.5))
    assert v.decision == "HOLD" and v.reason.startswith("not enough data") and not v.results
    assert judge(windows(5, pairs=50)).decision == "HOLD"


def test_config_file(tmp_path: Path) -> None:
    path = tmp_path / "verdict.toml"
    path.write_text('min_windows = 2\n[[metrics]]\nmetric = "disagreement_rate"\n'
                    'critical = false\nlimit = 0.1\n')
    config = JudgeConfig.from_file(path)
    assert config.min_windows == 2
    assert judge(windows(2, disagree=0.05), config).decision == "PROMOTE"
    path.write_text('[[metrics]]\nmetric = "nope"\n')
    with pytest.raises(ShadowstreamError, match="unknown"):
        JudgeConfig.from_file(path)
    path.write_text('[[metrics]]\nmetric = "disagreement_rate"\n')
    with pytest.raises(ShadowstreamError, match="needs a limit"):
        JudgeConfig.from_file(path)
