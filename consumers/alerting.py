"""The alert state machine, one per (model, candidate, rule). Pure code.

::

    ok / resolved --breach--> pending --breach for N windows--> firing --cleared--> resolved
                   \\--breach, N = 1-------------------------> firing
    pending --no breach--> back to ok / resolved

Each window closes once per model and candidate (the overall summary, segment None) and moves
each rule's machine at most one step (a ``scope = "model"`` rule has one machine per model,
moved by the first candidate's summary of each window); every change of state is one
``Alert``. Windows with fewer than the rule's ``min_samples`` or without the metric change
nothing. The alert id is derived from model, candidate, rule, window and new state, and a
machine never evaluates a window at or before the last one it saw, so reprocessing windows
after a restart (the join may emit a window twice) repeats no alert.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import MutableMapping
from dataclasses import asdict, dataclass
from typing import Any

from consumers.rules import (
    ALL_CANDIDATES,
    Rule,
    RuleSet,
    control_rate,
    counts,
    evidence_step,
    metric_feature,
    metric_value,
    samples,
)
from schemas import Alert, WindowSummary

__all__ = ["AlertMachine", "RuleState", "alert_id"]

log = logging.getLogger("shadowstream.join")


@dataclass
class RuleState:
    state: str = "ok"
    calm: str = "ok"  # where a pending breach that stops goes back to: ok, or resolved
    breaches: int = 0
    last_window: int = -1
    evidence: float = 0.0  # a cusum rule's accumulated evidence (nats)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> RuleState:
        return cls(**doc)


def _measured(rule: Rule, value: float, s: WindowSummary) -> str:
    """What the alert says was measured: the metric's value, or a cusum rule's evidence."""
    over = (f" over the control {s.control.candidate!r}"
            if s.control is not None and _judges_divergence(rule) else "")
    if rule.test != "cusum":
        return f"{rule.metric}{over} = {value:.4g}"
    k, n = counts(s, rule.metric) or (0, 0)
    return (f"{rule.metric}: evidence {value:.3g} nats that it is {rule.target:g} rather than "
            f"{rule.baseline:g}{over} (this window {k}/{n})")


def _judges_divergence(rule: Rule) -> bool:
    return rule.metric == "disagreement_rate" or rule.metric.startswith("divergence.")


def _over(floor: float, excess: float) -> float:
    """A rate ``excess`` above the control's ``floor``, kept inside (0, 1) for the LLR."""
    return min(max(floor + excess, 1e-6), 1 - 1e-6)


def alert_id(model: str, candidate: str, rule: str, window_start: int, state: str) -> str:
    key = f"{model}\x1f{candidate}\x1f{rule}\x1f{window_start}\x1f{state}".encode()
    return hashlib.blake2b(key, digest_size=12).hexdigest()


class AlertMachine:
    """Evaluates closed windows against the rules; ``states`` may be any mapping (a dict, or
    one backed by Redis) from ``model|candidate|rule`` to the state as a dict."""

    def __init__(self, rules: RuleSet,
                 states: MutableMapping[str, dict[str, Any]] | None = None) -> None:
        self.rules = rules
        self.states: MutableMapping[str, dict[str, Any]] = {} if states is None else states
        self._warned: set[tuple[str, str]] = set()
        self.unmatched: list[str] = []
        """What ``_warn_unmatched`` said, for a replay's report."""

    def _warn_unmatched(self, rule: Rule, s: WindowSummary, what: str,
                        names: list[str]) -> None:
        """A drift metric that names no feature of the model, or a field rate that names no
        field of its answers, can never fire: say so, once (feature and field names are
        only known once windows come)."""
        key = (s.model, rule.name)
        if key in self._warned:
            return
        self._warned.add(key)
        said = (f"rule {rule.name!r}: {rule.metric} matches no {what} of {s.model} (its "
                f"{what}s: {', '.join(names)})")
        self.unmatched.append(said)
        log.warning("%s", said)

    @staticmethod
    def _evidence(rule: Rule, st: RuleState, s: WindowSummary) -> float | None:
        """Page's CUSUM: the evidence so far plus this window's, floored at 0 (a window too
        small, or without the counts, adds nothing and is not evaluated)."""
        found = counts(s, rule.metric)
        if found is None or found[1] < rule.min_samples or found[1] == 0:
            return None
        k, n = found
        assert rule.baseline is not None and rule.target is not None  # checked by Rule
        baseline, target = rule.baseline, rule.target
        floor = control_rate(s, rule.metric)
        if floor is not None:  # an excess over the control's rate in the same window
            baseline, target = _over(floor, baseline), _over(floor, target)
        st.evidence = max(0.0, st.evidence + evidence_step(k, n, baseline, target))
        return st.evidence

    def severity(self, model: str, candidate: str, rule: str) -> str:
        for r in self.rules.for_pair(model, candidate):
            if r.name == rule:
                return r.severity
        return "warning"

    def evaluate(self, summary: WindowSummary, now_ms: int) -> list[Alert]:
        if summary.segment is not None:
            return []
        alerts = []
        for rule in self.rules.for_pair(summary.model, summary.candidate):
            # A model's rule is judged on the first candidate's summary of a window; the
            # other candidates' summaries of that window are then "seen before".
            if summary.is_control and rule.scope != "model" and _judges_divergence(rule):
                continue  # a control's divergence is the noise floor, not a fault
            candidate = ALL_CANDIDATES if rule.scope == "model" else summary.candidate
            key = f"{summary.model}|{candidate}|{rule.name}"
            doc = self.states.get(key)
            st = RuleState.from_dict(doc) if doc else RuleState()
            if summary.window_start <= st.last_window:
                continue  # seen before: a window emitted again after a restart
            alert = self._step(rule, st, summary, now_ms, candidate)
            self.states[key] = asdict(st)
            if alert is not None:
                alerts.append(alert)
        return alerts

    def _step(self, rule: Rule, st: RuleState, s: WindowSummary, now_ms: int,
              candidate: str) -> Alert | None:
        st.last_window = s.window_start
        value = (self._evidence(rule, st, s) if rule.test == "cusum"
                 else metric_value(s, rule.metric, rule))
        if value is None and rule.metric.startswith("drift.") and s.drift:
            self._warn_unmatched(rule, s, "feature", sorted(s.drift))
        fields = [k.removeprefix("mean_field:") for k in s.divergence
                  if k.startswith("mean_field:")]
        if value is None and rule.metric.startswith("divergence.mean_field:") and fields:
            self._warn_unmatched(rule, s, "field", sorted(fields))
        if value is None or samples(s, rule.metric) < rule.min_samples:
            return None
        before = st.state
        if st.state == "firing":
            if rule.cleared(value):
                st.state, st.calm, st.breaches = "resolved", "resolved", 0
        elif rule.breached(value):
            st.breaches += 1
            st.state = "firing" if st.breaches >= rule.for_windows else "pending"
        elif st.state == "pending":
            st.state, st.breaches = st.calm, 0
        if st.state == before:
            return None
        threshold = rule.clear_level if st.state == "resolved" else rule.threshold
        clears = f", clears at {rule.clear_level:g}" if st.state == "resolved" else ""
        feature = metric_feature(s, rule.metric, rule)
        on = f" on {feature}" if feature and feature not in rule.metric else ""
        return Alert.model_validate({
            "schema": Alert.SCHEMA,
            "alert_id": alert_id(s.model, candidate, rule.name, s.window_start, st.state),
            "model": s.model, "candidate": candidate, "ts": now_ms, "rule": rule.name,
            "severity": rule.severity, "state": st.state, "previous_state": before,
            "metric": rule.metric, "value": value, "threshold": threshold,
            "window_start": s.window_start, "window_end": s.window_end,
            "message": f"{_measured(rule, value, s)}{on} ({rule.comparison} "
                       f"{rule.threshold:g}{clears}) for {s.model}/{candidate}: {before} "
                       f"-> {st.state}"})
