"""Per-request comparators: how differently the candidate answered, by output kind.

Pure code (no Kafka, no Faust): the join app and offline replay call the same
``compare``. Outputs are the wire documents of ``schemas.records.ModelOutput`` as plain dicts.

Every comparison has one ``score`` (0 = identical, larger = further apart; what window quantiles
and exemplars rank by), a ``disagree`` verdict under the model's tolerances, and named metrics:

=========  ==================================================  ======================  ==========
kind       metrics                                             disagree when           score
=========  ==================================================  ======================  ==========
scalar     abs_error, rel_error                                |c-l| > atol+rtol*|l|   abs_error
vector     abs_error (max), mean_abs_error, rel_error (max)    any component as above  abs_error
probs      top1_agree, js_divergence (bits), total_variation,  top-1 class differs,    js_div.
           confidence_delta (candidate - live)                 or JS > js_max if set
scores     topk_overlap, rbo (rank-biased overlap, extrapol.)  top-1 item differs, or  1 - rbo
                                                               overlap < min_overlap
embedding  cosine_distance                                     > cosine_max            cos. dist.
=========  ==================================================  ======================  ==========
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from consumers.config import FromToml
from schemas import ShadowstreamError
from schemas.exceptions import ConfigError, refuse_unknown

__all__ = ["METRICS", "Comparison", "ComparisonError", "Tolerance", "Tolerances", "compare",
           "rbo"]

METRICS = ("abs_error", "rel_error", "mean_abs_error", "top1_agree", "js_divergence",
           "total_variation", "confidence_delta", "topk_overlap", "rbo", "cosine_distance")
"""Every per-request metric a comparator names (a window has ``divergence.mean_<metric>``)."""

_EPS = 1e-12


class ComparisonError(ShadowstreamError):
    """The two answers cannot be compared (different kinds or shapes): a dead letter."""


@dataclass(frozen=True)
class Tolerance:
    """How far a candidate may be from the live answer before it counts as disagreeing."""

    atol: float = 1e-6
    """scalar/vector: absolute tolerance."""
    rtol: float = 1e-3
    """scalar/vector: relative tolerance (of the live value), as numpy.isclose."""
    js_max: float | None = None
    """probs: also disagree when the JS divergence (bits) exceeds this."""
    top_k: int = 5
    """scores: size of the top-k overlap."""
    min_overlap: float | None = None
    """scores: also disagree when the top-k overlap is below this."""
    rbo_p: float = 0.9
    """scores: persistence of rank-biased overlap (weight of the top ranks)."""
    cosine_max: float = 0.01
    """embedding: disagree when the cosine distance exceeds this."""


@dataclass(frozen=True)
class Tolerances(FromToml):
    """A default tolerance and overrides per model, from a TOML file:

    .. code-block:: toml

        [default]
        rtol = 0.01
        [models.fraud-scorer]
        js_max = 0.05
    """

    default: Tolerance = field(default_factory=Tolerance)
    models: Mapping[str, Tolerance] = field(default_factory=dict)

    def for_model(self, model: str) -> Tolerance:
        return self.models.get(model, self.default)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], source: str = "tolerances") -> Tolerances:
        refuse_unknown(source, doc, ("default", "models"))
        default = _tolerance(Tolerance(), doc.get("default", {}), source, "[default]")
        models = doc.get("models", {})
        if not isinstance(models, Mapping):
            raise ConfigError(source, "must be a table of [models.NAME]", key="models")
        return cls(default, {name: _tolerance(default, table, source, f"[models.{name}]")
                             for name, table in models.items()})


def _tolerance(base: Tolerance, table: Any, source: str, where: str) -> Tolerance:
    if not isinstance(table, Mapping):
        raise ConfigError(source, "must be a table", key=where)
    refuse_unknown(source, table, (f.name for f in fields(Tolerance)), where=where)
    for key, value in table.items():
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0 \
                or not math.isfinite(value):
            raise ConfigError(source, f"must be a non-negative number, got {value!r}",
                              key=f"{where} {key}")
    return replace(base, **table)


@dataclass(frozen=True)
class Comparison:
    kind: str
    score: float
    disagree: bool
    metrics: dict[str, float]


def compare(live: Mapping[str, Any], candidate: Mapping[str, Any],
            tol: Tolerance = Tolerance()) -> Comparison:
    """Compare two output documents of the same kind; ComparisonError when they cannot be."""
    kind = live.get("kind")
    if kind != candidate.get("kind"):
        raise ComparisonError(f"output kinds differ: live {kind!r}, candidate "
                              f"{candidate.get('kind')!r}")
    fn = _COMPARATORS.get(kind)  # type: ignore[arg-type]
    if fn is None:
        raise ComparisonError(f"unknown output kind {kind!r}")
    a, b = live["value"], candidate["value"]
    if kind == "scalar":
        a, b = [a], [b]
    elif len(a) != len(b):
        raise ComparisonError(f"{kind} lengths differ: live {len(a)}, candidate {len(b)}")
    if kind == "probs":
        b = _as_live_labels(live.get("labels"), candidate.get("labels"), b)
    # Plain Python on purpose: outputs are short, and numpy's per-call cost would dominate.
    if not all(map(math.isfinite, a)) or not all(map(math.isfinite, b)):
        raise ComparisonError("non-finite value in an output")
    return fn(a, b, tol, live, candidate)


def _regression(kind: str) -> Any:
    def fn(a: list[float], b: list[float], tol: Tolerance, *_: Any) -> Comparison:
        err = [abs(y - x) for x, y in zip(a, b, strict=True)]
        rel = max(e / max(abs(x), _EPS) for e, x in zip(err, a, strict=True))
        metrics = {"abs_error": max(err), "rel_error": rel}
        if kind == "vector":
            metrics["mean_abs_error"] = math.fsum(err) / len(err)
        disagree = any(e > tol.atol + tol.rtol * abs(x) for e, x in zip(err, a, strict=True))
        return Comparison(kind, metrics["abs_error"], disagree, metrics)
    return fn


def _probs(a: list[float], b: list[float], tol: Tolerance, *_: Any) -> Comparison:
    sa, sb = math.fsum(a), math.fsum(b)
    js = tv = 0.0
    top_p = top_q = 0
    best_p = best_q = -math.inf
    log2 = math.log2
    # One pass (this runs for every pair): normalised values, JS, TV and both top-1s, the
    # first of equal maxima as numpy's argmax.
    for i in range(len(a)):
        x, y = a[i] / sa, b[i] / sb
        m = 0.5 * (x + y)
        if x > 0:
            js += 0.5 * x * log2(x / m)
        if y > 0:
            js += 0.5 * y * log2(y / m)
        tv += abs(x - y)
        if x > best_p:
            best_p, top_p = x, i
        if y > best_q:
            best_q, top_q = y, i
    js = max(0.0, js)
    metrics = {"top1_agree": float(top_p == top_q), "js_divergence": js,
               "total_variation": 0.5 * tv, "confidence_delta": best_q - best_p}
    disagree = top_p != top_q or (tol.js_max is not None and js > tol.js_max)
    return Comparison("probs", js, disagree, metrics)


def _as_live_labels(live: Sequence[str] | None, cand: Sequence[str] | None,
                   values: list[float]) -> list[float]:
    """The candidate's probabilities in the live answer's class order. With labels on both
    sides the classes are matched by label; with labels on one side only (a model card with
    ``labels`` against a service that answers bare probabilities) they are matched by index,
    as the numbers are all the live side gives."""
    if not live or not cand or list(live) == list(cand):
        return values
    if sorted(live) != sorted(cand) or len(set(cand)) != len(cand):
        raise ComparisonError(f"labels differ: live {list(live)}, candidate {list(cand)}")
    where = {label: i for i, label in enumerate(cand)}
    return [values[where[label]] for label in live]


def _scores(a: list[float], b: list[float], tol: Tolerance, live: Mapping[str, Any],
            cand: Mapping[str, Any]) -> Comparison:
    # Item ids when both sides have them; else both by position (ids against positions
    # would never agree).
    both = bool(live.get("items")) and bool(cand.get("items"))
    items_a = live["items"] if both else range(len(a))
    items_b = cand["items"] if both else range(len(b))
    # Stable sort: ties keep index order on both sides, so equal scores rank equally.
    rank_a = [items_a[i] for i in sorted(range(len(a)), key=lambda i: -a[i])]
    rank_b = [items_b[i] for i in sorted(range(len(b)), key=lambda i: -b[i])]
    k = max(1, min(tol.top_k, len(rank_a)))
    overlap = len(set(rank_a[:k]) & set(rank_b[:k])) / k
    similarity = rbo(rank_a, rank_b, tol.rbo_p)
    disagree = rank_a[0] != rank_b[0] or (tol.min_overlap is not None and
                                          overlap < tol.min_overlap)
    metrics = {"topk_overlap": overlap, "rbo": similarity,
               "top1_agree": float(rank_a[0] == rank_b[0])}
    return Comparison("scores", 1.0 - similarity, disagree, metrics)


def rbo(s: Sequence[Any], t: Sequence[Any], p: float = 0.9) -> float:
    """Extrapolated rank-biased overlap of two rankings (Webber et al. 2010, eq. 32).

    1 for identical rankings, 0 for disjoint ones; ``p`` sets how much the top ranks weigh.
    """
    if not 0 < p < 1:
        raise ValueError("rbo: p must be in (0, 1)")
    k = min(len(s), len(t))
    if k == 0:
        return 1.0
    seen_s: set[Any] = set()
    seen_t: set[Any] = set()
    overlap = 0
    total = 0.0
    for d in range(1, k + 1):
        x, y = s[d - 1], t[d - 1]
        if x == y:
            overlap += 1
        else:
            overlap += (x in seen_t) + (y in seen_s)
        seen_s.add(x)
        seen_t.add(y)
        total += overlap / d * p**d
    return min(1.0, overlap / k * p**k + (1 - p) / p * total)


def _embedding(a: list[float], b: list[float], tol: Tolerance, *_: Any) -> Comparison:
    na = math.sqrt(math.fsum(x * x for x in a))
    nb = math.sqrt(math.fsum(y * y for y in b))
    if na == 0.0 or nb == 0.0:
        distance = 0.0 if na == nb else 1.0
    else:
        dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
        distance = min(2.0, max(0.0, 1.0 - dot / (na * nb)))
    return Comparison("embedding", distance, distance > tol.cosine_max,
                      {"cosine_distance": distance})


_COMPARATORS = {"scalar": _regression("scalar"), "vector": _regression("vector"),
                "probs": _probs, "scores": _scores, "embedding": _embedding}
