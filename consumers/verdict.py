"""PROMOTE, HOLD or ROLLBACK from per-window values, judged metric by metric. Pure code.

In the manner of Kayenta's canary judge, with the error control a release gate needs:

- a rate of counts (disagreements of the compared pairs, candidate errors of the pairs) is
  pooled over the windows and judged by its confidence interval (Clopper-Pearson, or Wilson)
  against its limit: *fail* when the interval lies above the limit, *pass* when it lies below,
  *inconclusive* when it straddles it (at the limit a mean alone is a coin flip);
- with a control (a second copy of the live model, its windows beside the candidate's), the
  disagreement rate judged is the candidate's excess over the control's, by Newcombe's
  interval of the difference: the live model's own variability is not held against it;
- another one-sided metric (the candidate's answers' PSI against the live answers) by the
  t-interval of its per-window mean, the same way;
- a metric with a live counterpart (latency) by a two-sided Mann-Whitney U test of the
  per-window values, then an effect-size bound in the bad direction: a significant
  difference smaller than the bound still passes;
- each one-sided metric is judged on the whole run and again on the windows since a change
  for the worse, if the run has one (the split after which the metric is most significantly
  worse, by Fisher's exact test for a rate or Welch's t-test for a mean, corrected for the
  splits tried): a candidate that degrades late is not averaged away, and a steady one is
  not judged on a few small recent windows;
- every test is made at ``alpha`` divided by the number of tests (Bonferroni): the chance of
  any false fail in a verdict is at most ``alpha``.

Then: any failing *critical* metric -> ROLLBACK (exit 2), it decides alone; any other failing
or any inconclusive metric -> HOLD (exit 1); fewer than ``min_windows`` windows with at least
``min_pairs`` pairs -> HOLD, "not enough data", before anything else; otherwise PROMOTE (0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from itertools import accumulate
from statistics import fmean, median, stdev
from typing import Any, Literal

from scipy import stats as sps

from consumers.config import FromToml
from schemas.exceptions import ConfigError, closest, refuse_unknown

__all__ = ["DEFAULT_METRICS", "JudgeConfig", "MetricCheck", "Verdict", "judge",
           "rate_interval"]

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


def _max_drift(prefix: str, stat: str) -> Getter:
    def get(w: Window) -> float | None:
        values = [d[stat] for f, d in (w.get("drift") or {}).items()
                  if f.startswith(prefix) and stat in d]
        return max(values) if values else None
    return get


def _disagreements(w: Window) -> tuple[int, int] | None:
    state = w.get("state") or {}
    if "compared" in state:
        return int(state["disagreements"]), int(state["compared"])
    rate = w.get("disagreement_rate")
    if rate is None:
        return None
    # A replay report's windows carry the rate, not the state: every pair without a
    # candidate error is compared.
    n = int(w.get("pairs", 0)) - int(w.get("candidate_errors", 0))
    return round(rate * n), n


def _control_disagreements(w: Window) -> tuple[int, int] | None:
    c = w.get("control")
    if not isinstance(c, Mapping) or not c.get("compared"):
        return None
    return int(c["disagreements"]), int(c["compared"])


def _errors(w: Window) -> tuple[int, int] | None:
    n = int(w.get("pairs", 0))
    return (int(w.get("candidate_errors", 0)), n) if n else None


# The rates of counts, judged pooled by their confidence interval: (events, trials) a window.
COUNTS: dict[str, Callable[[Window], tuple[int, int] | None]] = {
    "disagreement_rate": _disagreements,
    "candidate_error_rate": _errors,
}
# Where each side of another metric is read in a window summary (as a dict).
SOURCES: dict[str, tuple[Getter | None, Getter]] = {
    "latency_p50": (_path("latency", "live_p50"), _path("latency", "candidate_p50")),
    "latency_p99": (_path("latency", "live_p99"), _path("latency", "candidate_p99")),
    "output_psi": (None, _max_drift("candidate.", "psi")),
}
KNOWN = (*COUNTS, *SOURCES)


@dataclass(frozen=True)
class MetricCheck:
    metric: str
    critical: bool = False
    limit: float | None = None
    """One-sided metrics (no live counterpart): what the candidate's rate (or mean) may not
    exceed, judged by its confidence interval."""
    allowed_increase: float = 0.0
    """Two-sided metrics: how much worse the candidate's median may be, relative (0.2 = 20 %)
    or absolute (``relative = false``), before a significant difference fails."""
    relative: bool = True
    direction: Literal["increase", "decrease"] = "increase"
    """Which way is bad."""

    def __post_init__(self) -> None:
        if self.metric not in KNOWN:
            hint = closest(self.metric, KNOWN)
            raise ConfigError("verdict", f"metric {self.metric!r} unknown"
                              + ("" if hint else f" (known: {', '.join(sorted(KNOWN))})"),
                              key="metric", hint=hint)
        for name in ("limit", "allowed_increase"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                raise ConfigError("verdict", f"{name} of {self.metric!r} must be a number, "
                                             f"got {v!r}", key=name)
        for name in ("critical", "relative"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError("verdict", f"{name} of {self.metric!r} must be true or "
                                             f"false, got {getattr(self, name)!r}", key=name)
        if self.direction not in ("increase", "decrease"):
            raise ConfigError("verdict", f"direction of {self.metric!r} must be increase or "
                                         f"decrease, got {self.direction!r}", key="direction")
        if (self.metric in COUNTS or SOURCES[self.metric][0] is None) and self.limit is None:
            raise ConfigError("verdict", f"metric {self.metric!r} has no live side: it "
                              "needs a limit", key="limit")


DEFAULT_METRICS: tuple[MetricCheck, ...] = (
    MetricCheck("disagreement_rate", critical=True, limit=0.02),
    MetricCheck("candidate_error_rate", critical=True, limit=0.01),
    MetricCheck("latency_p99", allowed_increase=0.2),
    MetricCheck("output_psi", limit=0.1),
)


@dataclass(frozen=True)
class JudgeConfig(FromToml):
    metrics: tuple[MetricCheck, ...] = DEFAULT_METRICS
    alpha: float = 0.05
    """The chance of any false fail in one verdict (split over its tests, Bonferroni)."""
    min_windows: int = 3
    min_pairs: int = 100
    since_change: bool = True
    """Also judge the windows since a change for the worse, if the run has one (a candidate
    that degrades late is not averaged away)."""
    interval: Literal["exact", "wilson"] = "exact"
    """The confidence interval of a rate: Clopper-Pearson (never too narrow) or Wilson."""

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], source: str = "verdict") -> JudgeConfig:
        """Top-level settings and ``[[metrics]]`` tables that change the default check of
        the same metric (the fields a table leaves out keep the default's values) or add one;
        anything unknown is refused with the closest valid name."""
        known = {f.name for f in fields(cls)}
        refuse_unknown(source, doc, known)
        metric_keys = {f.name for f in fields(MetricCheck)}
        by_name = {m.metric: m for m in DEFAULT_METRICS}
        for table in doc.get("metrics", []):
            where = f"[[metrics]] {table.get('metric')!r}"
            misplaced = [k for k in table if k in known and k not in metric_keys]
            if misplaced:
                # TOML puts every key after a [[metrics]] header into that table.
                raise ConfigError(source, f"{misplaced[0]!r} is a top-level setting, not one "
                                          f"of {where}: put it above the first [[metrics]]")
            refuse_unknown(source, table, metric_keys, where=where)
            try:
                base = by_name.get(table.get("metric", ""))
                check = replace(base, **table) if base is not None else MetricCheck(**table)
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
            elif key == "since_change":
                if not isinstance(value, bool):
                    raise ConfigError(source, f"must be true or false, got {value!r}", key=key)
            elif key == "interval":
                if value not in ("exact", "wilson"):
                    raise ConfigError(source, f"must be exact or wilson, got {value!r}",
                                      key=key, hint=closest(str(value), ("exact", "wilson")))
            elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(source, f"must be an integer >= 1, got {value!r}", key=key)
        return replace(cls(), metrics=tuple(by_name.values()), **top)


Outcome = Literal["pass", "fail", "inconclusive", "no data"]
Scope = Literal["all", "since change"]


@dataclass(frozen=True)
class MetricResult:
    metric: str
    outcome: Outcome
    critical: bool
    reason: str
    candidate: float | None = None
    live: float | None = None
    p_value: float | None = None
    scope: Scope = "all"
    """``all`` windows, or those ``since change`` (from the change point on)."""
    windows: int = 0
    interval: tuple[float, float] | None = None
    """The candidate's confidence interval (rates and one-sided means)."""


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
    segment), each a WindowSummary as a dict, in any order."""
    usable = sorted((w for w in windows if w.get("pairs", 0) >= config.min_pairs),
                    key=lambda w: w.get("window_start", 0))
    if len(usable) < config.min_windows:
        return Verdict("HOLD", f"not enough data: {len(usable)} window(s) with at least "
                               f"{config.min_pairs} pairs, {config.min_windows} needed",
                       len(usable))
    changes = [m for m in config.metrics if config.since_change and _one_sided(m)]
    alpha = config.alpha / (len(config.metrics) + len(changes))  # Bonferroni over the tests
    results = tuple(_check(m, usable, alpha, config.interval) for m in config.metrics) + tuple(
        _since_change(m, usable, alpha, config.interval, config.min_windows) for m in changes)
    critical = [r for r in results if r.outcome == "fail" and r.critical]
    doubtful = [r for r in results if r.outcome in ("fail", "inconclusive")]
    if critical:
        return Verdict("ROLLBACK", "; ".join(r.reason for r in critical), len(usable), results)
    if doubtful:
        return Verdict("HOLD", "; ".join(r.reason for r in doubtful), len(usable), results)
    nodata = sorted(r.metric for r in results if r.outcome == "no data" and r.scope == "all")
    why = ("every metric with data passed (no data: " + ", ".join(nodata) + ")" if nodata
           else "every metric passed")
    return Verdict("PROMOTE", why, len(usable), results)


def rate_interval(k: int, n: int, alpha: float, method: str = "exact") -> tuple[float, float]:
    """Bounds of a binomial rate, each one-sided at ``alpha`` (a two-sided interval at
    confidence 1 - 2 alpha): Clopper-Pearson (``exact``) or Wilson, as scipy computes them."""
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method=method)
    return float(ci.low), float(ci.high)


def _judged(lo: float, hi: float, m: MetricCheck) -> Outcome:
    """A confidence interval against a limit: wholly on the bad side fails, wholly on the
    good side passes, across it is inconclusive."""
    assert m.limit is not None
    bad, good = (lo > m.limit, hi <= m.limit) if m.direction == "increase" else (
        hi < m.limit, lo >= m.limit)
    return "fail" if bad else "pass" if good else "inconclusive"


def _check(m: MetricCheck, windows: Sequence[Window], alpha: float, method: str,
           scope: Scope = "all", where: str = "") -> MetricResult:
    """One metric on some windows."""
    where = f"{m.metric} ({where or f'{len(windows)} windows'})"
    level = f"{100 * (1 - 2 * alpha):.3g} %"
    if m.metric in COUNTS:
        k, n = _pooled(m, windows)
        if not n:
            return MetricResult(m.metric, "no data", m.critical, f"{where}: no values",
                                scope=scope, windows=len(windows))
        control = _pooled_control(m, windows)
        if control is not None:
            return _excess(m, (k, n), control, alpha, method, scope, where, level, windows)
        lo, hi = rate_interval(k, n, alpha, method)
        outcome = _judged(lo, hi, m)
        reason = (f"{where}: {k:,}/{n:,} = {_pct(k / n)}, {level} interval {_pct(lo)} to "
                  f"{_pct(hi)}, {_relation(outcome, m)} the limit {_pct(m.limit)}")
        return MetricResult(m.metric, outcome, m.critical, reason, k / n, scope=scope,
                            windows=len(windows), interval=(lo, hi))
    live_of, cand_of = SOURCES[m.metric]
    cand = [v for w in windows if (v := cand_of(w)) is not None]
    if len(cand) < 2:
        why = ("no candidate latency in these windows (a replay measures it with --latency)"
               if m.metric.startswith("latency") and not cand else "too few values")
        return MetricResult(m.metric, "no data", m.critical, f"{where}: {why}",
                            scope=scope, windows=len(windows))
    if live_of is None:
        mean, sd = fmean(cand), stdev(cand)
        half = float(sps.t.ppf(1 - alpha, len(cand) - 1)) * sd / math.sqrt(len(cand))
        lo, hi = mean - half, mean + half
        if m.metric == "output_psi":
            lo = max(0.0, lo)  # a PSI is never negative
        outcome = _judged(lo, hi, m)
        reason = (f"{where}: mean {mean:.4g}, {level} interval {lo:.4g} to {hi:.4g}, "
                  f"{_relation(outcome, m)} the limit {m.limit:g}")
        return MetricResult(m.metric, outcome, m.critical, reason, mean, scope=scope,
                            windows=len(windows), interval=(lo, hi))
    live = [v for w in windows if (v := live_of(w)) is not None]
    if len(live) < 2:
        return MetricResult(m.metric, "no data", m.critical, f"{where}: too few values",
                            scope=scope, windows=len(windows))
    p = float(sps.mannwhitneyu(cand, live, alternative="two-sided").pvalue)
    mc, ml = median(cand), median(live)
    sign = 1 if m.direction == "increase" else -1
    change = sign * ((mc - ml) / abs(ml) if m.relative and ml else mc - ml)
    unit = "%" if m.relative and ml else ""
    scale = 100 if unit else 1
    ms = " ms" if m.metric.startswith("latency") else ""
    medians = f"{where}: candidate median {mc:.4g}{ms} vs live {ml:.4g}{ms}"
    worse = (f"{change * scale:+.3g}{unit} worse, allowed {m.allowed_increase * scale:g}{unit}")
    if change > m.allowed_increase:
        # Worse beyond the bound: a fail when significant; otherwise too few windows to
        # tell (Mann-Whitney on 4 against 4 cannot go below p = 0.029), which holds.
        outcome: Outcome = "fail" if p < alpha else "inconclusive"
        reason = (f"{medians} ({worse}; Mann-Whitney p={p:.3g} "
                  f"{'<' if p < alpha else '>='} {alpha:.3g})")
    else:
        outcome = "pass"
        reason = f"{medians} (within the bound; Mann-Whitney p={p:.3g})"
    return MetricResult(m.metric, outcome, m.critical, reason, mc, ml, p, scope=scope,
                        windows=len(windows))


def _one_sided(m: MetricCheck) -> bool:
    return m.metric in COUNTS or SOURCES[m.metric][0] is None


def _pooled(m: MetricCheck, windows: Sequence[Window]) -> tuple[int, int]:
    counted = [c for w in windows if (c := COUNTS[m.metric](w)) is not None]
    return sum(c[0] for c in counted), sum(c[1] for c in counted)


def _pooled_control(m: MetricCheck, windows: Sequence[Window]
                    ) -> tuple[str, int, int] | None:
    """The control's pooled (name, disagreements, compared) over the windows where both
    were compared, None without a control."""
    if m.metric != "disagreement_rate":
        return None
    counted = [(c, w["control"]["candidate"]) for w in windows
               if (c := _control_disagreements(w)) is not None]
    if not counted:
        return None
    return (counted[0][1], sum(c[0] for c, _ in counted), sum(c[1] for c, _ in counted))


def _excess(m: MetricCheck, cand: tuple[int, int], control: tuple[str, int, int],
            alpha: float, method: str, scope: Scope, where: str, level: str,
            windows: Sequence[Window]) -> MetricResult:
    """The candidate's rate minus the control's, by Newcombe's hybrid score interval of a
    difference of two proportions (each side's own interval, Clopper-Pearson or Wilson,
    combined), judged against the limit as a rate is: what the live model's own
    variability makes the control disagree is not held against the candidate."""
    (k1, n1), (name, k0, n0) = cand, control
    p1, p0 = k1 / n1, k0 / n0
    l1, u1 = rate_interval(k1, n1, alpha, method)
    l0, u0 = rate_interval(k0, n0, alpha, method)
    d = p1 - p0
    lo = d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)
    hi = d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    outcome = _judged(lo, hi, m)
    reason = (f"{where}: {_pct(p1)} against {_pct(p0)} for the control {name!r} "
              f"({k1:,}/{n1:,} and {k0:,}/{n0:,}), excess {_signed_pct(d)}, {level} interval "
              f"{_signed_pct(lo)} to {_signed_pct(hi)}, {_relation(outcome, m)} the limit "
              f"{_pct(m.limit)}")
    return MetricResult(m.metric, outcome, m.critical, reason, d, p0, scope=scope,
                        windows=len(windows), interval=(lo, hi))


def _signed_pct(x: float) -> str:
    return f"{100 * x:+.4g} %"


def _since_change(m: MetricCheck, windows: Sequence[Window], alpha: float, method: str,
                  least: int) -> MetricResult:
    """Scan the run for the split after which the metric is most significantly worse (each
    side at least ``least`` windows; Fisher's exact test for a rate, Welch's t-test for a
    mean, one-sided), Bonferroni over the splits tried. With no such change it passes; with
    one, the windows from the change on are judged on their own against the limit."""
    splits = range(least, len(windows) - least + 1)
    if not splits:
        return MetricResult(m.metric, "no data", m.critical,
                            f"{m.metric} (since a change): too few windows to look for one "
                            f"({len(windows)}; it needs {2 * least}, min_windows on each side)",
                            scope="since change", windows=len(windows))
    if m.metric not in COUNTS and sum(SOURCES[m.metric][1](w) is not None
                                      for w in windows) < 2 * least:
        return MetricResult(m.metric, "no data", m.critical,
                            f"{m.metric} (since a change): too few values",
                            scope="since change", windows=len(windows))
    worse = "greater" if m.direction == "increase" else "less"
    best, p_best = 0, 1.0
    if m.metric in COUNTS:
        counts = [COUNTS[m.metric](w) or (0, 0) for w in windows]
        # Events and trials before each split, as running sums.
        ks = list(accumulate((c[0] for c in counts), initial=0))
        ns = list(accumulate((c[1] for c in counts), initial=0))
        for split in splits:
            k0, n0 = ks[split], ns[split]
            k1, n1 = ks[-1] - k0, ns[-1] - n0
            if n0 and n1:
                p = float(sps.fisher_exact([[k1, n1 - k1], [k0, n0 - k0]],
                                           alternative=worse).pvalue)
                if p < p_best:
                    best, p_best = split, p
        test = "Fisher"
    else:
        values = [SOURCES[m.metric][1](w) for w in windows]
        for split in splits:
            after = [v for v in values[split:] if v is not None]
            before = [v for v in values[:split] if v is not None]
            if len(after) >= 2 and len(before) >= 2 and (stdev(after) or stdev(before)):
                p = float(sps.ttest_ind(after, before, equal_var=False,
                                        alternative=worse).pvalue)
                if p < p_best:
                    best, p_best = split, p
        test = "Welch"
    p_adj = min(1.0, p_best * len(splits))
    tried = f"{len(splits)} split{'s' if len(splits) > 1 else ''}"
    if p_adj >= alpha:
        return MetricResult(m.metric, "pass", m.critical,
                            f"{m.metric} (since a change): none, the later windows are no "
                            f"worse than the earlier ones (best {test} p={p_adj:.3g} "
                            f"corrected over {tried}, >= {alpha:.3g})", scope="since change",
                            windows=len(windows), p_value=p_adj)
    result = _check(m, windows[best:], alpha, method, "since change",
                    f"since window {best + 1} of {len(windows)}, worse from there: {test} "
                    f"p={p_adj:.3g} corrected over {tried}, < {alpha:.3g}")
    return replace(result, p_value=p_adj)


def _pct(x: float | None) -> str:
    return f"{100 * (x or 0.0):.4g} %"


def _relation(outcome: Outcome, m: MetricCheck) -> str:
    if outcome == "inconclusive":
        return "across"
    bad = outcome == "fail"
    return ("above" if bad else "under") if m.direction == "increase" else (
        "below" if bad else "over")
