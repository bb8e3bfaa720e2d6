"""Event-time windows: what one model and candidate did in one tumbling window. Pure code.

The join keeps one *entry* per request (a plain dict, see ``consumers.join``); a window's
numbers are a function of its entries alone, which is what makes them exact and the same after
a restart (entries live in a changelogged table until their window closes) and the same in
offline replay. Per candidate, an entry counts once in ``requests`` and once in exactly one of
``pairs``, ``unmatched_live`` (the candidate answered, the live request never came),
``unmatched_shadow`` (the request came, the candidate never answered) or ``dead_lettered``, so
``requests = pairs + unmatched_live + unmatched_shadow + dead_lettered`` holds by construction.

Aggregates merge by addition (counts, sketches, histograms): summaries of several partitions,
workers or windows combine exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from consumers.compare import json_leaves, text_tokens
from consumers.drift import Histogram, Profile, drift, feature_names, features_of
from consumers.sketch import QuantileSketch
from schemas import WindowSummary
from schemas.records import ControlSummary

__all__ = ["WindowAggregate", "WindowKey", "aggregate", "output_features", "request_features",
           "top1_as_live", "window_start", "with_controls"]

QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
SKETCH_ACCURACY = 0.01


def window_start(ts: int, size_ms: int) -> int:
    return ts - ts % size_ms


def output_features(output: Mapping[str, Any] | None,
                    prefix: str = "") -> dict[str, float | str]:
    """What drift watches in an answer: one or two numbers or labels per output kind, named
    ``<prefix>.<name>`` (``prefix`` "output" for the live answer, "candidate" for a
    candidate's). A text: its length in words (``tokens``) and characters (``chars``), and
    whether it is empty (``empty``, "true" or "false": its rate is what a test compares); a
    JSON document: its number of fields (``fields``)."""
    if not output:
        return {}
    kind, value = output.get("kind"), output.get("value")
    names = feature_names(prefix)
    if kind == "scalar":
        return {names["value"]: float(value)}  # type: ignore[arg-type]
    if kind == "text":
        text = value if isinstance(value, str) else ""
        return {names["tokens"]: float(len(text_tokens(text))), names["chars"]: float(len(text)),
                names["empty"]: "true" if not text.strip() else "false"}
    if kind == "json":
        return {names["fields"]: float(json_leaves(value))}
    if not isinstance(value, list) or not value:
        return {}
    if kind == "probs":
        top = value.index(max(value))  # the first of equal maxima
        labels = output.get("labels")
        return {names["confidence"]: float(value[top]),
                names["top1"]: labels[top] if labels else str(top)}
    if kind == "scores":
        top = value.index(max(value))  # the first of equal maxima
        items = output.get("items")
        return {names["top1"]: items[top] if items else str(top)}
    if kind == "embedding":
        return {names["norm"]: float(sum(v * v for v in value) ** 0.5)}
    return {names[f"value[{i}]"]: float(v) for i, v in enumerate(value[:8])}  # vector


def request_features(inputs: Mapping[str, Any],
                     live_output: Mapping[str, Any] | None) -> dict[str, float | str]:
    """The features drift watches in one request: its inputs and the live answer."""
    features = features_of(inputs, "inputs")
    if live_output:
        features.update(output_features(live_output, "output"))
    return features


@dataclass(frozen=True, order=True)
class WindowKey:
    model: str
    candidate: str
    start: int
    segment: str | None = None

    def sort_key(self) -> tuple[str, str, int, str]:
        return (self.model, self.candidate, self.start, self.segment or "")


@dataclass
class WindowAggregate:
    """Mergeable state of one window of one model and candidate (and segment)."""

    requests: int = 0
    pairs: int = 0
    unmatched_live: int = 0
    unmatched_shadow: int = 0
    dead_lettered: int = 0
    candidate_errors: int = 0
    compared: int = 0
    disagreements: int = 0
    metric_sums: dict[str, float] = field(default_factory=dict)
    divergence: QuantileSketch = field(default_factory=lambda: QuantileSketch(SKETCH_ACCURACY))
    live_latency: QuantileSketch = field(default_factory=lambda: QuantileSketch(SKETCH_ACCURACY))
    candidate_latency: QuantileSketch = field(
        default_factory=lambda: QuantileSketch(SKETCH_ACCURACY))
    histograms: dict[str, Histogram] = field(default_factory=dict)
    control: bool = False
    """The candidate is a control (its answers said so)."""

    def add(self, entry: Mapping[str, Any], candidate: str, profile: Profile | None) -> bool:
        """Count one request entry for one candidate; False when it is not this candidate's.
        (``aggregate`` counts a window's entries at once, with the same rules.)"""
        live = entry.get("live")
        answer = entry.get("c", {}).get(candidate)
        dead = "dl" in entry
        if not dead and live is None and answer is None:
            return False
        one = _Gathered()
        one.take(dead, live, answer)
        self.merge(one.aggregate(profile))
        return True

    def merge(self, other: WindowAggregate) -> WindowAggregate:
        for name in ("requests", "pairs", "unmatched_live", "unmatched_shadow", "dead_lettered",
                     "candidate_errors", "compared", "disagreements"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.control = self.control or other.control
        for k, v in other.metric_sums.items():
            self.metric_sums[k] = self.metric_sums.get(k, 0.0) + v
        self.divergence.merge(other.divergence)
        self.live_latency.merge(other.live_latency)
        self.candidate_latency.merge(other.candidate_latency)
        for k, h in other.histograms.items():
            if k in self.histograms:
                self.histograms[k].merge(h)
            else:
                self.histograms[k] = Histogram.from_dict(h.to_dict())
        return self

    def summary(self, key: WindowKey, size_ms: int, profile: Profile | None,
                now_ms: int) -> WindowSummary:
        """The window's numbers. One that cannot be computed is left out and counted in
        ``undefined_statistics``: a window is always emitted, never NaN."""
        undefined: list[str] = []
        div: dict[str, float] = {}
        if self.compared:
            for name, q in QUANTILES.items():
                div[name] = self.divergence.quantile(q)  # type: ignore[assignment]
            div["max"] = self.divergence.max
            div["mean"] = self.divergence.sum / self.compared
            for k, v in sorted(self.metric_sums.items()):
                div[f"mean_{k}"] = v / self.compared
        return WindowSummary.model_validate({
            "schema": WindowSummary.SCHEMA, "model": key.model, "candidate": key.candidate,
            "segment": key.segment, "ts": now_ms, "window_start": key.start,
            "window_end": key.start + size_ms, "requests": self.requests, "pairs": self.pairs,
            "unmatched_live": self.unmatched_live, "unmatched_shadow": self.unmatched_shadow,
            "dead_lettered": self.dead_lettered, "candidate_errors": self.candidate_errors,
            "coverage": self.pairs / self.requests if self.requests else None,
            "disagreement_rate": self.disagreements / self.compared if self.compared else None,
            "divergence": div,
            "latency": {"live_p50": self.live_latency.quantile(0.5),
                        "live_p99": self.live_latency.quantile(0.99),
                        "candidate_p50": self.candidate_latency.quantile(0.5),
                        "candidate_p99": self.candidate_latency.quantile(0.99)},
            "drift": self._drift(profile, undefined),
            "undefined_statistics": len(undefined) + _drop_non_finite(div),
            "state": self.to_state(),
            "is_control": True if self.control else None,
        })

    def _drift(self, profile: Profile | None, undefined: list[str]
               ) -> dict[str, dict[str, float]]:
        if profile is None:
            return {}
        out = {}
        for name, hist in sorted(self.histograms.items()):
            if name.startswith("candidate."):
                # The candidate's answers against the live answers to the same requests of
                # this window: a candidate that answers differently is not "input drift",
                # and a live model that drifts does not make every candidate drift too.
                reference = self.histograms.get(_reference_name(name))
            else:
                fp = profile.features.get(name)
                reference = fp.reference if fp is not None else None
            if reference is not None:
                stats = drift(reference, hist, undefined)
                if stats:
                    out[name] = stats
        return out

    def to_state(self) -> dict[str, Any]:
        control = {"control": True} if self.control else {}
        return {**control, "requests": self.requests, "pairs": self.pairs,
                "unmatched_live": self.unmatched_live, "unmatched_shadow": self.unmatched_shadow,
                "dead_lettered": self.dead_lettered, "candidate_errors": self.candidate_errors,
                "compared": self.compared, "disagreements": self.disagreements,
                "metric_sums": self.metric_sums, "divergence": self.divergence.to_dict(),
                "live_latency": self.live_latency.to_dict(),
                "candidate_latency": self.candidate_latency.to_dict(),
                "histograms": {k: h.to_dict() for k, h in sorted(self.histograms.items())}}

    @classmethod
    def from_state(cls, doc: Mapping[str, Any]) -> WindowAggregate:
        agg = cls(**{k: doc[k] for k in ("requests", "pairs", "unmatched_live",
                                         "unmatched_shadow", "dead_lettered",
                                         "candidate_errors", "compared", "disagreements")})
        agg.metric_sums = dict(doc["metric_sums"])
        agg.control = bool(doc.get("control", False))
        agg.divergence = QuantileSketch.from_dict(doc["divergence"])
        agg.live_latency = QuantileSketch.from_dict(doc["live_latency"])
        agg.candidate_latency = QuantileSketch.from_dict(doc["candidate_latency"])
        agg.histograms = {k: Histogram.from_dict(h) for k, h in doc["histograms"].items()}
        return agg


def _drop_non_finite(values: dict[str, float]) -> int:
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    for k in bad:
        del values[k]
    return len(bad)


def top1_as_live(live: Mapping[str, Any], candidate: Mapping[str, Any]) -> str | None:
    """The candidate's top-1 class or item, named as the live answer names its own: by
    label or item id when the live answer has them, else by index. So a candidate whose card
    has labels ("legit", "fraud") is judged against a live reference of indices ("0", "1")
    in the live's terms, and the other way round."""
    kind, value = candidate.get("kind"), candidate.get("value")
    if kind not in ("probs", "scores") or not isinstance(value, list) or not value:
        return None
    top = value.index(max(value))  # the first of equal maxima
    names_key = "labels" if kind == "probs" else "items"
    live_names, own = live.get(names_key), candidate.get(names_key)
    if live_names:
        if own and top < len(own):
            return str(own[top])
        return str(live_names[top]) if top < len(live_names) else str(top)
    return str(top)


def _reference_name(name: str) -> str:
    """A candidate's output feature is binned like the live answer's (the same reference
    bins), and judged against the live answers of the same window."""
    return "output." + name.removeprefix("candidate.") if name.startswith("candidate.") else name


def aggregate(entries: Iterable[Mapping[str, Any]], candidates: Mapping[str, Iterable[str]],
              size_ms: int, profiles: Mapping[str, Profile]) -> dict[WindowKey, WindowAggregate]:
    """Window aggregates of request entries, per model, candidate, window and segment.

    ``candidates`` names the candidates each model is known to have: a request none of them
    answered still counts (as unmatched) for every one of them.

    The numbers of ``WindowAggregate.add`` entry by entry (a unit test holds them to it),
    faster: each entry is read once for its window and its segment, and the sketches and
    drift bins are filled a column at a time, in entry order (the same sums, to the bit;
    a drift feature's mean and variance are numpy's over its column).
    """
    gathered: dict[tuple[str, str, int, str | None], _Gathered] = {}
    known: dict[str, tuple[list[str], set[str]]] = {}
    for entry in entries:
        model = entry["m"]
        names = known.get(model)
        if names is None:
            own = set(candidates.get(model, ()))
            names = known[model] = (sorted(own), own)
        answers = entry.get("c") or {}
        cands = names[0] if answers.keys() <= names[1] else sorted(names[1] | answers.keys())
        ts = entry["ts"]
        start = ts - ts % size_ms
        segment = entry.get("seg") or None
        dead = "dl" in entry
        live = entry.get("live")
        for cand in cands:
            answer = answers.get(cand)
            if not dead and live is None and answer is None:
                continue  # not this candidate's request
            g = gathered.get((model, cand, start, None))
            if g is None:
                g = gathered[(model, cand, start, None)] = _Gathered()
            g.take(dead, live, answer)
            if segment is not None:
                g = gathered.get((model, cand, start, segment))
                if g is None:
                    g = gathered[(model, cand, start, segment)] = _Gathered()
                g.take(dead, live, answer)
    return {WindowKey(*key): g.aggregate(profiles.get(key[0]))
            for key, g in gathered.items()}


class _Gathered:
    """One window key's entries as ``WindowAggregate.add`` counts them, its values kept in
    columns to be sketched and binned at once (``aggregate``)."""

    __slots__ = ("candidate_errors", "candidate_latency", "candidate_rows", "control",
                 "dead_lettered", "live_latency", "live_rows", "pairs", "requests", "results",
                 "unmatched_live", "unmatched_shadow")

    def __init__(self) -> None:
        self.requests = self.pairs = self.unmatched_live = self.unmatched_shadow = 0
        self.dead_lettered = self.candidate_errors = 0
        self.control = False
        self.live_latency: list[float] = []
        self.candidate_latency: list[float] = []
        self.live_rows: list[Mapping[str, float | str]] = []
        self.candidate_rows: list[Mapping[str, float | str]] = []
        self.results: list[Mapping[str, Any]] = []

    def take(self, dead: bool, live: Mapping[str, Any] | None,
             answer: Mapping[str, Any] | None) -> None:
        self.requests += 1
        if dead:  # the request itself could not be decoded
            self.dead_lettered += 1
            return
        if live is not None:
            self.live_latency.append(live["lat"])
            self.live_rows.append(live.get("f", {}))
        if answer is not None:
            if "ctl" in answer:
                self.control = True
            self.candidate_latency.append(answer["lat"])
            if "f" in answer:
                self.candidate_rows.append(answer["f"])
        if live is None:
            self.unmatched_live += 1
        elif answer is None:
            self.unmatched_shadow += 1
        elif "dl" in answer:
            self.dead_lettered += 1
        else:
            self.pairs += 1
            self.candidate_errors += answer.get("err") is not None
            result = answer.get("r")
            if result is not None:
                self.results.append(result)

    def aggregate(self, profile: Profile | None) -> WindowAggregate:
        results = self.results
        agg = WindowAggregate(self.requests, self.pairs, self.unmatched_live,
                              self.unmatched_shadow, self.dead_lettered,
                              self.candidate_errors, len(results),
                              sum(bool(r["d"]) for r in results))
        agg.control = self.control
        agg.live_latency.extend(self.live_latency)
        agg.candidate_latency.extend(self.candidate_latency)
        agg.divergence.extend([r["s"] for r in results])
        sums = agg.metric_sums
        for r in results:
            for k, v in r["m"].items():
                sums[k] = sums.get(k, 0.0) + v
        if profile is not None:
            profile.observe_rows(agg.histograms, self.live_rows)
            profile.observe_rows(agg.histograms, self.candidate_rows, _reference_name)
        return agg


def with_controls(summaries: list[WindowSummary]) -> list[WindowSummary]:
    """Each candidate's summary with its model's control beside it (the control's summary
    of the same window and segment), when the model has one: what rules and verdicts judge
    the candidate's excess by. A model with several controls is compared with the first by
    name; without one, the summaries are returned as they are."""
    controls: dict[tuple[str, int, str | None], WindowSummary] = {}
    for s in sorted(summaries, key=lambda s: s.candidate):
        if s.is_control:
            controls.setdefault((s.model, s.window_start, s.segment), s)
    if not controls:
        return summaries
    out = []
    for s in summaries:
        c = controls.get((s.model, s.window_start, s.segment))
        if c is None or s.is_control:
            out.append(s)
            continue
        state = c.state or {}
        excess = (s.disagreement_rate - c.disagreement_rate
                  if s.disagreement_rate is not None and c.disagreement_rate is not None
                  else None)
        out.append(s.model_copy(update={"control": ControlSummary(
            candidate=c.candidate, compared=int(state.get("compared", 0)),
            disagreements=int(state.get("disagreements", 0)),
            disagreement_rate=c.disagreement_rate, excess_disagreement_rate=excess,
            divergence=dict(c.divergence))}))
    return out
