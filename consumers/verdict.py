"""PROMOTE, HOLD or ROLLBACK from per-window values, judged metric by metric. Pure code.

In the manner of Kayenta's canary judge: each metric compares the candidate's per-window values
with the live model's (a two-sided Mann-Whitney U test, then an effect-size bound in the bad
direction: a significant difference smaller than the bound still passes), or, where the live
side has no counterpart (disagreement, candidate errors), the candidate's mean with a limit.

- any failing *critical* metric -> ROLLBACK (exit 2), it decides alone;
- any other failing metric -> HOLD (exit 1);
- fewer than ``min_windows`` windows with at least ``min_pairs`` pairs -> HOLD, "not enough
  data", before anything else is judged;
- otherwise PROMOTE (exit 0).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from statistics import fmean, median
from typing import Any, Literal

from scipy import stats as sps

from consumers.config import FromToml
from schemas.exceptions import ConfigError, closest, refuse_unknown

__all__ = ["DEFAULT_METRICS", "JudgeConfig", "MetricCheck", "Verdict", "judge"]

Window = Mapping[str, Any]
Getter = Callable[[Window], float | None]
EXIT = {"PROMOTE": 0, "HOLD": 1, "ROLLBACK": 2}


def _path(*keys: str) -> Getter:
    def get(w: Window) -> float | None:
        v: Any = w
        for k in keys:
            if not isinstance(v, Mapping) or k not in v:
                return None
            v = v[k]
        return None if v is None else float(v)
    return get


def _ratio(num: str, den: str) -> Getter:
    def get(w: Window) -> float | None:
        d = w.get(den) or 0
        return w.get(num, 0) / d if d else None
    return get


# Where each side of a metric is read in a window summary (as a dict).
SOURCES: dict[str, tuple[Getter | None, Getter]] = {
    "disagreement_rate": (None, _path("disagreement_rate")),
    "candidate_error_rate": (None, _ratio("candidate_errors", "pairs")),
    "latency_p50": (_path("latency", "live_p50"), _path("latency", "candidate_p50")),
    "latency_p99": (_path("latency", "live_p99"), _path("latency", "candidate_p99")),
    "output_psi": (_path("drift", "output.confidence", "psi"),
                   _path("drift", "candidate.confidence", "psi")),
}


@dataclass(frozen=True)
class MetricCheck:
    metric: str
    critical: bool = False
    limit: float | None = None
    """One-sided metrics (no live counterpart): the candidate's mean may not exceed this."""
    allowed_increase: float = 0.0
    """Two-sided metrics: how much worse the candidate's median may be, relative (0.2 = 20 %)
    or absolute (``relative = false``), before a significant difference fails."""
    relative: bool = True
    direction: Literal["increase", "decrease"] = "increase"
    """Which way is bad."""

    def __post_init__(self) -> None:
        if self.metric not in SOURCES:
            hint = closest(self.metric, SOURCES)
            raise ConfigError("verdict", f"metric {self.metric!r} unknown"
                              + ("" if hint else f" (known: {', '.join(sorted(SOURCES))})"),
                              key="metric", hint=hint)
        if SOURCES[self.metric][0] is None and self.limit is None:
            raise ConfigError("verdict", f"metric {self.metric!r} has no live side: it "
                              "needs a limit", key="limit")


DEFAULT_METRICS: tuple[MetricCheck, ...] = (
    MetricCheck("disagreement_rate", critical=True, limit=0.02),
    MetricCheck("candidate_error_rate", critical=True, limit=0.01),
    MetricCheck("latency_p99", allowed_increase=0.2),
    MetricCheck("output_psi", allowed_increase=0.1, relative=False),
)


@dataclass(frozen=True)
class JudgeConfig(FromToml):
    metrics: tuple[MetricCheck, ...] = DEFAULT_METRICS
    alpha: float = 0.05
    min_windows: int = 3
    min_pairs: int = 100

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], source: str = "verdict") -> JudgeConfig:
        """Top-level settings and ``[[metrics]]`` tables that replace the default check of
        the same metric; anything unknown is refused with the closest valid name."""
        known = {f.name for f in fields(cls)}
        refuse_unknown(source, doc, known)
        metric_keys = {f.name for f in fields(MetricCheck)}
        by_name = {m.metric: m for m in DEFAULT_METRICS}
        for table in doc.get("metrics", []):
            where = f"[[metrics]] {table.get('metric')!r}"
            refuse_unknown(source, table, metric_keys, where=where)
            try:
                check = MetricCheck(**table)
            except TypeError as exc:
                raise ConfigError(source, str(exc).split(") ", 1)[-1], key=where) from None
            except ConfigError as exc:  # said again with the file and the table
                raise ConfigError(source, exc.reason, key=where, hint=exc.hint) from None
            by_name[check.metric] = check
        top = {k: v for k, v in doc.items() if k != "metrics"}
        for key, value in top.items():
            if key == "alpha":
                if isinstance(value, bool) or not isinstance(value, int | float) \
                        or not 0 < value < 1:
                    raise ConfigError(source, f"must be a probability in (0, 1), got {value!r}",
                                      key=key)
            elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(source, f"must be an integer >= 1, got {value!r}", key=key)
        return replace(cls(), metrics=tuple(by_name.values()), **top)


@dataclass(frozen=True)
class MetricResult:
    metric: str
    outcome: Literal["pass", "fail", "no data"]
    critical: bool
    reason: str
    candidate: float | None = None
    live: float | None = None
    p_value: float | None = None


@dataclass(frozen=True)
class Verdict:
    decision: Literal["PROMOTE", "HOLD", "ROLLBACK"]
    reason: str
    windows: int
    results: tuple[MetricResult, ...] = field(default_factory=tuple)

    @property
    def exit_code(self) -> int:
        return EXIT[self.decision]

    def as_dict(self) -> dict[str, Any]:
        return {"decision": self.decision, "reason": self.reason, "windows": self.windows,
                "exit_code": self.exit_code,
                "metrics": [r.__dict__ for r in self.results]}


def judge(windows: Sequence[Window], config: JudgeConfig = JudgeConfig()) -> Verdict:
    """The verdict on one model and candidate from its closed windows (overall, not per
    segment), each a WindowSummary as a dict."""
    usable = [w for w in windows if w.get("pairs", 0) >= config.min_pairs]
    if len(usable) < config.min_windows:
        return Verdict("HOLD", f"not enough data: {len(usable)} window(s) with at least "
                               f"{config.min_pairs} pairs, {config.min_windows} needed",
                       len(usable))
    results = tuple(_check(m, usable, config.alpha) for m in config.metrics)
    critical = [r for r in results if r.outcome == "fail" and r.critical]
    failed = [r for r in results if r.outcome == "fail"]
    if critical:
        return Verdict("ROLLBACK", "; ".join(r.reason for r in critical), len(usable), results)
    if failed:
        return Verdict("HOLD", "; ".join(r.reason for r in failed), len(usable), results)
    nodata = [r.metric for r in results if r.outcome == "no data"]
    why = ("every metric with data passed (no data: " + ", ".join(nodata) + ")" if nodata
           else "every metric passed")
    return Verdict("PROMOTE", why, len(usable), results)


def _check(m: MetricCheck, windows: Sequence[Window], alpha: float) -> MetricResult:
    live_of, cand_of = SOURCES[m.metric]
    cand = [v for w in windows if (v := cand_of(w)) is not None]
    if not cand:
        return MetricResult(m.metric, "no data", m.critical, f"{m.metric}: no values")
    if live_of is None:
        mean = fmean(cand)
        worse = mean > m.limit if m.direction == "increase" else mean < m.limit  # type: ignore[operator]
        word = "above" if m.direction == "increase" else "below"
        reason = (f"{m.metric}: mean over {len(cand)} windows {mean:.4g} {word} the limit "
                  f"{m.limit:g}" if worse else
                  f"{m.metric}: mean over {len(cand)} windows {mean:.4g} within {m.limit:g}")
        return MetricResult(m.metric, "fail" if worse else "pass", m.critical, reason, mean)
    live = [v for w in windows if (v := live_of(w)) is not None]
    if len(live) < 2 or len(cand) < 2:
        return MetricResult(m.metric, "no data", m.critical, f"{m.metric}: too few values")
    p = float(sps.mannwhitneyu(cand, live, alternative="two-sided").pvalue)
    mc, ml = median(cand), median(live)
    sign = 1 if m.direction == "increase" else -1
    change = sign * ((mc - ml) / abs(ml) if m.relative and ml else mc - ml)
    unit = "%" if m.relative and ml else ""
    scale = 100 if unit else 1
    if p < alpha and change > m.allowed_increase:
        outcome = "fail"
        reason = (f"{m.metric}: candidate median {mc:.4g} vs live {ml:.4g} "
                  f"({change * scale:+.3g}{unit} worse, allowed "
                  f"{m.allowed_increase * scale:g}{unit}; Mann-Whitney p={p:.3g})")
    else:
        outcome = "pass"
        reason = (f"{m.metric}: candidate median {mc:.4g} vs live {ml:.4g} "
                  f"(p={p:.3g}, {'not significant' if p >= alpha else 'within the bound'})")
    return MetricResult(m.metric, outcome, m.critical, reason, mc, ml, p)
