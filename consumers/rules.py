"""Alert rules: what to watch in each closed window, loaded from TOML. Pure code.

A rules file has defaults and per model/candidate overrides::

    [[rules]]
    name = "disagreement"
    metric = "disagreement_rate"      # any WindowSummary number, or a derived one below
    comparison = ">="
    threshold = 0.05
    clear_threshold = 0.03            # hysteresis: firing until the value falls below this
    for_windows = 2                   # breached in this many evaluated windows in a row
    min_samples = 100                 # windows with fewer pairs are not evaluated
    severity = "warning"

    [[overrides]]
    model = "fraud-scorer"            # and/or candidate = "..."
    rule = "disagreement"
    threshold = 0.02

Metrics: the numbers of WindowSummary (``requests``, ``coverage``, ``disagreement_rate``...),
``divergence.<name>`` (``divergence.p99``), ``latency.<name>``, ``drift.<feature>.<stat>``,
``drift.<pattern>.<stat>`` with shell-style wildcards and one ``{a,b}`` group (the largest over
the features that match, e.g. ``drift.inputs.*.psi`` over the inputs, ``drift.*.psi`` over every
feature; the alert names the feature; ``drift.<pattern>.p`` is the tests' p-values corrected
for testing the features at once), and the derived
``unmatched_rate`` ((unmatched_live + unmatched_shadow) / requests), ``candidate_error_rate``
(candidate_errors / pairs) and ``dead_letter_rate``. A JSON model's ``divergence.mean_field:<path>``
is the rate at which one field differed (``divergence.mean_field:$.status``).

With a control (a candidate flagged ``control``: a second copy of the live model),
``disagreement_rate`` and ``divergence.<name>`` are the candidate's excess over the control's
in the same window, and a ``cusum`` rule's baseline and target are read as excesses over the
control's rate: only divergence beyond the live model's own variability counts.

``direction`` says which way is bad: ``up`` (comparison ``>`` or ``>=``, clear threshold at or
below the threshold), ``down`` (``<``/``<=``, clear threshold at or above), or ``both`` (the
absolute value is compared, as ``up``). It defaults to what the comparison implies.
"""

from __future__ import annotations

import fnmatch
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from consumers.compare import METRICS, is_json_path
from consumers.config import FromToml
from consumers.drift import STATISTICS, Correction, adjust
from consumers.windows import QUANTILES
from schemas import WindowSummary
from schemas.exceptions import ConfigError, closest, refuse_unknown
from schemas.records import LatencySummary

__all__ = ["ALL_CANDIDATES", "COUNTED", "DEFAULT_RULES", "Rule", "RuleError", "RuleSet",
           "control_rate", "counts", "evidence_step", "metric_feature", "metric_value"]

Comparison = Literal[">", ">=", "<", "<="]
Direction = Literal["up", "down", "both"]
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
_SEVERITIES = ("info", "warning", "critical")
_DERIVED = ("unmatched_rate", "candidate_error_rate", "dead_letter_rate")
_NUMBERS = ("requests", "pairs", "unmatched_live", "unmatched_shadow", "dead_lettered",
            "candidate_errors", "coverage", "disagreement_rate")


COUNTED = ("disagreement_rate", "candidate_error_rate")
"""The rates a ``cusum`` rule may watch: each window gives (events, trials)."""


class RuleError(ConfigError):
    """A rules file that cannot be used; says which file, which rule and why."""

    def __init__(self, rule: str, reason: str, source: str = "rules", hint: str = "") -> None:
        super().__init__(source, reason, key=f"rule {rule!r}", hint=hint)
        self.rule = rule


@dataclass(frozen=True)
class Rule:
    name: str
    metric: str
    threshold: float
    comparison: Comparison = ">="
    clear_threshold: float | None = None
    """Default: the threshold (no hysteresis)."""
    for_windows: int = 1
    min_samples: int = 1
    """Least pairs a window needs to be evaluated (requests for the rates of requests)."""
    direction: Direction | None = None
    severity: str = "warning"
    correction: Correction = "bh"
    """For ``drift.<pattern>.p``: how the p-values of the features that match are corrected
    for testing them at once (``bh``: Benjamini-Hochberg, ``bonferroni``, ``none``)."""
    min_effect: float = 0.0
    """For ``drift.<pattern>.p``: a feature whose ``effect`` is below this cannot move
    (it still counts in the correction), so that a huge window does not alert on a trivial
    shift."""
    test: Literal["threshold", "cusum"] = "threshold"
    """``cusum`` (for the rates of counts: disagreement_rate, candidate_error_rate): evidence
    accumulated across windows that the rate is at ``target`` rather than ``baseline`` (the
    binomial log-likelihood ratio, in nats, summed and floored at 0 after each window, as
    Page's CUSUM); ``threshold`` and ``clear_threshold`` are then evidence levels, and a rate
    that stays near ``baseline`` keeps it at 0 whatever the window's size."""
    baseline: float | None = None
    """With ``cusum``: the rate that is fine (what live traffic shows when nothing is wrong)."""
    target: float | None = None
    """With ``cusum``: the rate to catch (above ``baseline``)."""
    scope: Literal["candidate", "model"] = "candidate"
    """``model``: judged once per model and window, not once per candidate (for what every
    candidate's summary carries alike: the drift of the inputs and of the live answers); its
    alerts name the candidate ``*``."""

    def __post_init__(self) -> None:
        if not self.name:
            raise RuleError("?", "a rule needs a name")
        _choice(self.name, "comparison", self.comparison, tuple(_COMPARE))
        _choice(self.name, "severity", self.severity, _SEVERITIES)
        _check_metric(self.name, self.metric)
        for name in ("threshold", "clear_threshold"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)
                                  or not math.isfinite(v)):
                raise RuleError(self.name, f"{name} must be a finite number, got {v!r}")
        if not isinstance(self.for_windows, int) or self.for_windows < 1:
            raise RuleError(self.name, f"for_windows must be an integer >= 1, "
                                       f"got {self.for_windows!r}")
        if not isinstance(self.min_samples, int) or self.min_samples < 0:
            raise RuleError(self.name, f"min_samples must be an integer >= 0, "
                                       f"got {self.min_samples!r}")
        _choice(self.name, "test", self.test, ("threshold", "cusum"))
        if self.test == "cusum":
            if self.metric not in COUNTED:
                raise RuleError(self.name, f"test = cusum needs a rate of counts "
                                           f"({', '.join(COUNTED)}), not {self.metric!r}")
            if not (isinstance(self.baseline, int | float) and isinstance(self.target,
                                                                          int | float)
                    and 0 < self.baseline < self.target < 1):
                raise RuleError(self.name, "test = cusum needs 0 < baseline < target < 1, "
                                           f"got baseline {self.baseline!r}, target "
                                           f"{self.target!r}")
            if self.comparison not in (">", ">="):
                raise RuleError(self.name, "test = cusum compares evidence: comparison >=")
            if self.threshold < 1:
                # A rate written where evidence is meant (the flat rule's habit) would fire
                # on the first window that leans towards the target at all.
                raise RuleError(self.name, f"threshold {self.threshold:g} of a cusum rule is "
                                           "evidence in nats (7 = odds of about 1,100 to 1), "
                                           "not a rate: to catch a lower rate, set target")
        elif self.baseline is not None or self.target is not None:
            raise RuleError(self.name, "baseline and target go with test = cusum")
        _choice(self.name, "scope", self.scope, ("candidate", "model"))
        _choice(self.name, "correction", self.correction, ("bh", "bonferroni", "none"))
        if self.metric.startswith("drift.") and self.metric.endswith(".p") \
                and self.comparison not in ("<", "<="):
            # A small p-value is what moved: ">=" would fire on nearly every window.
            raise RuleError(self.name, f"{self.metric} is a p-value (small when the feature "
                                       f"moved): comparison must be <= (or <), got "
                                       f"{self.comparison!r}")
        if isinstance(self.min_effect, bool) or not isinstance(self.min_effect, int | float) \
                or not 0 <= self.min_effect <= 1:
            raise RuleError(self.name, f"min_effect must be a number in [0, 1], "
                                       f"got {self.min_effect!r}")
        rising = self.comparison in (">", ">=")
        direction = self.direction or ("up" if rising else "down")
        if direction not in ("up", "down", "both"):
            raise RuleError(self.name, f"direction must be up, down or both, got {direction!r}")
        if (direction in ("up", "both")) != rising:
            raise RuleError(self.name, f"direction {direction!r} does not go with "
                                       f"comparison {self.comparison!r}")
        clear = self.threshold if self.clear_threshold is None else self.clear_threshold
        if (rising and clear > self.threshold) or (not rising and clear < self.threshold):
            raise RuleError(self.name, f"clear_threshold {clear} is on the firing side of "
                                       f"threshold {self.threshold}")
        object.__setattr__(self, "direction", direction)

    @property
    def clear_level(self) -> float:
        return self.threshold if self.clear_threshold is None else self.clear_threshold

    def breached(self, value: float) -> bool:
        return _COMPARE[self.comparison](self._signed(value), self.threshold)

    def cleared(self, value: float) -> bool:
        """The value is back past the clear threshold (hysteresis)."""
        return not _COMPARE[self.comparison](self._signed(value), self.clear_level)

    def _signed(self, value: float) -> float:
        return abs(value) if self.direction == "both" else value


def _choice(rule: str, name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise RuleError(rule, f"{name} must be {' or '.join(map(repr, choices))}, got {value!r}",
                        hint=closest(str(value), choices))


def _alternatives(pattern: str) -> tuple[str, ...]:
    """``{inputs,output}.*`` as the shell reads it: ``inputs.*`` and ``output.*`` (one
    brace group; fnmatch has none)."""
    head, brace, tail = pattern.partition("{")
    if not brace or "}" not in tail:
        return (pattern,)
    inside, _, rest = tail.partition("}")
    return tuple(head + alt + rest for alt in inside.split(","))


def _matches(feature: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(feature, p) for p in patterns)


DRIFT_PREFIXES = ("inputs", "output", "candidate")
"""What every drift feature's name starts with: the request's inputs, the live answer, the
candidate's answer."""


def _check_metric(rule: str, metric: str) -> None:
    """Refuse a metric no window will ever have (a misspelt one would never fire)."""
    if metric in _NUMBERS or metric in _DERIVED:
        return
    head, _, rest = metric.partition(".")
    names: tuple[str, ...]
    if head == "divergence":
        names, name = (*QUANTILES, "max", "mean", *(f"mean_{m}" for m in METRICS)), rest
    elif head == "latency":
        names, name = tuple(LatencySummary.model_fields), rest
    elif head == "drift" and "." in rest:
        names, name = STATISTICS, rest.rpartition(".")[2]
        for pattern in _alternatives(rest.rpartition(".")[0]):
            first = pattern.partition(".")[0]
            if not any(fnmatch.fnmatchcase(p, first) for p in DRIFT_PREFIXES):
                hint = closest(first, DRIFT_PREFIXES)
                tip = f"; did you mean {metric.replace(first, hint, 1)!r}?" if hint else ""
                raise RuleError(rule, f"unknown metric {metric!r}: drift features are named "
                                      f"{', '.join(p + '.<name>' for p in DRIFT_PREFIXES)}, "
                                      f"and {first!r} matches none of them{tip}")
    else:
        hint = closest(metric, (*_NUMBERS, *_DERIVED))
        raise RuleError(rule, f"unknown metric {metric!r} (a WindowSummary number, "
                              f"divergence.<q>, latency.<name>, drift.<feature>.<stat>, "
                              f"drift.*.<stat> or one of {list(_DERIVED)})"
                              + (f"; did you mean {hint!r}?" if hint else ""))
    if head == "divergence" and (":" in name or name.startswith("mean_field")) \
            and name not in names:
        # One JSON field's difference rate: the field is the document's own (a misspelt
        # one is said when windows come, in the join's log), its path is checked here.
        path = name.partition(":")[2]
        if not name.startswith("mean_field:") or not is_json_path(path):
            raise RuleError(rule, f"unknown metric {metric!r}: one JSON field's difference "
                                  "rate is divergence.mean_field:<path>, the path from $ "
                                  "(e.g. divergence.mean_field:$.status)")
        return
    if name not in names:
        hint = closest(name, names)
        tip = f"; did you mean {metric[:len(metric) - len(name)] + hint!r}?" if hint else ""
        raise RuleError(rule, f"unknown metric {metric!r}: {head} has no {name!r} "
                              f"(known: {', '.join(names)}){tip}")


ALL_CANDIDATES = "*"
"""The candidate an alert of a ``scope = "model"`` rule names."""

# Each default is explained in docs/detection.md ("The shipped rules"), with the false-alarm
# rate and the delay measured by bench/bench_detection.py.
DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("disagreement", "disagreement_rate", 7.0, clear_threshold=1.0, min_samples=100,
         test="cusum", baseline=0.002, target=0.01),
    Rule("divergence_p99", "divergence.p99", 0.3, clear_threshold=0.2, for_windows=2,
         min_samples=100),
    Rule("starved_shadow", "unmatched_rate", 0.1, clear_threshold=0.05, for_windows=2,
         min_samples=100, severity="critical"),
    Rule("candidate_errors", "candidate_error_rate", 7.0, clear_threshold=1.0,
         min_samples=100, severity="critical", test="cusum", baseline=0.001, target=0.01),
    Rule("input_drift", "drift.{inputs,output}.*.p", 0.001, comparison="<=",
         clear_threshold=0.05, min_samples=100, correction="bh", min_effect=0.05,
         scope="model"),
    Rule("output_drift", "drift.candidate.*.p", 0.001, comparison="<=", clear_threshold=0.05,
         min_samples=100, correction="bh", min_effect=0.05),
)


@dataclass(frozen=True)
class _Override:
    rule: str
    model: str | None
    candidate: str | None
    changes: Mapping[str, Any]

    def matches(self, model: str, candidate: str) -> bool:
        return self.model in (None, model) and self.candidate in (None, candidate)


@dataclass(frozen=True)
class RuleSet(FromToml):
    rules: tuple[Rule, ...] = DEFAULT_RULES
    overrides: tuple[_Override, ...] = ()

    def for_pair(self, model: str, candidate: str) -> tuple[Rule, ...]:
        """The rules of one model and candidate, overrides applied (most specific last)."""
        out = []
        for rule in self.rules:
            hits = sorted((o for o in self.overrides if o.rule == rule.name
                           and o.matches(model, candidate)),
                          key=lambda o: (o.model is not None) + (o.candidate is not None))
            for o in hits:
                rule = replace(rule, **o.changes)
            out.append(rule)
        return tuple(out)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], source: str = "rules") -> RuleSet:
        """``rules`` replace the shipped defaults of the same name and add others;
        ``overrides`` change fields of a rule for a model and/or candidate."""
        refuse_unknown(source, doc, ("rules", "overrides"))
        known = {f.name for f in fields(Rule)}
        by_name = {r.name: r for r in DEFAULT_RULES}
        for i, table in enumerate(doc.get("rules", [])):
            name = table.get("name") or f"rules[{i}]"
            _refuse_keys(name, table, known, source)
            missing = [k for k in ("metric", "threshold") if k not in table]
            if missing:
                raise RuleError(name, f"needs {' and '.join(missing)}", source)
            try:
                by_name[name] = Rule(**table)
            except TypeError as exc:
                raise RuleError(name, str(exc).split(") ", 1)[-1], source) from None
            except RuleError as exc:
                raise RuleError(name, exc.reason, source, exc.hint) from None
        overrides = []
        settable = known - {"name", "metric"}
        for o in doc.get("overrides", []):
            name = o.get("rule")
            if name not in by_name:
                raise RuleError(str(name), "override of an unknown rule", source,
                                closest(str(name), by_name))
            _refuse_keys(name, o, settable | {"rule", "model", "candidate"}, source)
            changes = {k: v for k, v in o.items() if k not in ("rule", "model", "candidate")}
            if o.get("candidate") is not None \
                    and changes.get("scope", by_name[name].scope) == "model":
                raise RuleError(name, "is judged once per model (scope = \"model\"): an "
                                      "override cannot name a candidate", source)
            changes = _keep_hysteresis(by_name[name], changes)
            try:
                replace(by_name[name], **changes)  # refuse a bad override at load time
            except (TypeError, RuleError) as exc:
                raise RuleError(name, getattr(exc, "reason", str(exc)), source) from None
            overrides.append(_Override(name, o.get("model"), o.get("candidate"), changes))
        return cls(tuple(by_name.values()), tuple(overrides))


def _refuse_keys(rule: str, table: Mapping[str, Any], known: set[str], source: str) -> None:
    for key in table:
        if key not in known:
            raise RuleError(rule, f"unknown key {key!r}", source, closest(key, known))


def _keep_hysteresis(rule: Rule, changes: dict[str, Any]) -> dict[str, Any]:
    """An override that moves the threshold alone moves the clear threshold with it, in
    proportion (``threshold = 0.02`` on a rule of 0.05 clearing at 0.03 clears at 0.012):
    the rule's hysteresis stays what it was, and the override needs no second number."""
    new = changes.get("threshold")
    if new is None or "clear_threshold" in changes or rule.clear_threshold is None:
        return changes
    if not isinstance(new, int | float) or isinstance(new, bool):
        return changes  # refused, with its reason, by the rule's own checks
    old = rule.threshold
    ratio = rule.clear_threshold / old if old else 1.0
    return {**changes, "clear_threshold": new * ratio}


def metric_value(summary: WindowSummary, metric: str, rule: Rule | None = None
                 ) -> float | None:
    """The value of a rule's metric in a summary; None when the window has none. ``rule``
    gives the correction and effect floor of a ``drift.<pattern>.p`` metric."""
    s = summary
    if metric == "unmatched_rate":
        return (s.unmatched_live + s.unmatched_shadow) / s.requests if s.requests else None
    if metric == "candidate_error_rate":
        return s.candidate_errors / s.pairs if s.pairs else None
    if metric == "dead_letter_rate":
        return s.dead_lettered / s.requests if s.requests else None
    if metric == "disagreement_rate" and s.control is not None:
        return s.control.excess_disagreement_rate  # judged over the noise floor
    if metric in _NUMBERS:
        v = getattr(s, metric)
        return None if v is None else float(v)
    head, _, rest = metric.partition(".")
    if head == "divergence":
        v = s.divergence.get(rest)
        if v is None or s.control is None:
            return v
        # A field the control's answers never had differed in none of them.
        floor = s.control.divergence.get(rest, 0.0 if rest.startswith("mean_field:") else None)
        return None if floor is None else v - floor
    if head == "latency":
        return getattr(s.latency, rest, None)
    if rest.endswith(".p"):
        tested = drift_tests(s, rest, rule)
        return min(t[1] for t in tested) if tested else None
    found = _drift_max(s, rest)
    return found[1] if found else None


def metric_feature(summary: WindowSummary, metric: str, rule: Rule | None = None
                   ) -> str | None:
    """For a drift metric, the feature its value comes from (the largest, with wildcards);
    for ``drift.<pattern>.p``, every feature that moved (corrected p-value at or below the
    rule's threshold) with its statistics, most significant first."""
    if not metric.startswith("drift."):
        return None
    rest = metric.removeprefix("drift.")
    if rest.endswith(".p"):
        limit = rule.threshold if rule is not None else 0.05
        moved = [t for t in drift_tests(summary, rest, rule) if t[1] <= limit]
        return ", ".join(f"{f} (p {p:.2g}, effect {e:.3g})" for f, p, e in moved) or None
    found = _drift_max(summary, rest)
    return found[0] if found else None


def drift_tests(s: WindowSummary, rest: str, rule: Rule | None = None
                ) -> list[tuple[str, float, float]]:
    """``(feature, corrected p-value, effect)`` of the features ``<pattern>.p`` matches,
    most significant first: a feature under the rule's effect floor counts in the
    correction with p = 1."""
    patterns = _alternatives(rest.rpartition(".")[0])
    floor = rule.min_effect if rule is not None else 0.0
    method: Correction = rule.correction if rule is not None else "bh"
    rows = [(f, d["p"] if d.get("effect", 0.0) >= floor else 1.0, d.get("effect", 0.0))
            for f, d in sorted(s.drift.items()) if "p" in d and _matches(f, patterns)]
    corrected = adjust([p for _, p, _ in rows], method)
    return sorted(((f, q, e) for (f, _, e), q in zip(rows, corrected, strict=True)),
                  key=lambda t: (t[1], -t[2], t[0]))


def _drift_max(s: WindowSummary, rest: str) -> tuple[str, float] | None:
    pattern, _, stat = rest.rpartition(".")
    if not any(c in pattern for c in "*?[{"):
        v = s.drift.get(pattern, {}).get(stat)
        return None if v is None else (pattern, v)
    patterns = _alternatives(pattern)
    values = [(v, f) for f, d in s.drift.items()
              if _matches(f, patterns) and (v := d.get(stat)) is not None]
    if not values:
        return None
    v, f = max(values, key=lambda t: (t[0], t[1]))
    return f, v


def control_rate(summary: WindowSummary, metric: str) -> float | None:
    """The control's rate of a counted metric in the window (what a candidate's CUSUM
    measures its excess over), None without a control."""
    c = summary.control
    if metric != "disagreement_rate" or c is None or not c.compared:
        return None
    return c.disagreements / c.compared


def counts(summary: WindowSummary, metric: str) -> tuple[int, int] | None:
    """(events, trials) of a counted rate in a window: disagreements of the comparisons,
    candidate errors of the pairs; None when the window does not carry them."""
    state = summary.state or {}
    if metric == "disagreement_rate":
        n, k = state.get("compared"), state.get("disagreements")
        if n is None or k is None:
            return None
        return int(k), int(n)
    if metric == "candidate_error_rate":
        return summary.candidate_errors, summary.pairs
    return None


def evidence_step(k: int, n: int, baseline: float, target: float) -> float:
    """The binomial log-likelihood ratio of ``k`` events in ``n`` trials, rate ``target``
    against ``baseline`` (nats): what one window adds to a CUSUM."""
    return (k * math.log(target / baseline)
            + (n - k) * math.log((1 - target) / (1 - baseline)))


def samples(summary: WindowSummary, metric: str) -> int:
    """What min_samples counts: requests for the rates of requests, else pairs."""
    if metric in ("unmatched_rate", "dead_letter_rate", "requests", "coverage"):
        return summary.requests
    if metric.startswith("drift."):
        return summary.requests
    return summary.pairs
