"""Per-request comparators: how differently the candidate answered, by output kind.

Pure code (numpy only, no Kafka, no Faust): the join app and offline replay call the same
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

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from schemas import ShadowstreamError

__all__ = ["Comparison", "ComparisonError", "Tolerance", "Tolerances", "compare", "rbo"]

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
class Tolerances:
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
    def from_file(cls, path: Path) -> Tolerances:
        try:
            doc = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"{path}: {exc}") from None
        return cls.from_dict(doc, source=str(path))

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], source: str = "tolerances") -> Tolerances:
        default = _tolerance(Tolerance(), doc.get("default", {}), f"{source} [default]")
        models = {name: _tolerance(default, table, f"{source} [models.{name}]")
                  for name, table in doc.get("models", {}).items()}
        return cls(default, models)


def _tolerance(base: Tolerance, table: Mapping[str, Any], where: str) -> Tolerance:
    known = {f.name for f in fields(Tolerance)}
    unknown = set(table) - known
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(known)})")
    for key, value in table.items():
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{where}: {key} must be a non-negative number, got {value!r}")
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
    if kind == "scalar":
        a, b = np.array([live["value"]], float), np.array([candidate["value"]], float)
    else:
        a, b = np.asarray(live["value"], float), np.asarray(candidate["value"], float)
        if a.shape != b.shape:
            raise ComparisonError(f"{kind} lengths differ: live {a.size}, candidate {b.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ComparisonError("non-finite value in an output")
    return fn(a, b, tol, live, candidate)


def _regression(kind: str) -> Any:
    def fn(a: np.ndarray, b: np.ndarray, tol: Tolerance, *_: Any) -> Comparison:
        err = np.abs(b - a)
        rel = err / np.maximum(np.abs(a), _EPS)
        metrics = {"abs_error": float(err.max()), "rel_error": float(rel.max())}
        if kind == "vector":
            metrics["mean_abs_error"] = float(err.mean())
        disagree = bool((err > tol.atol + tol.rtol * np.abs(a)).any())
        return Comparison(kind, metrics["abs_error"], disagree, metrics)
    return fn


def _probs(a: np.ndarray, b: np.ndarray, tol: Tolerance, *_: Any) -> Comparison:
    p, q = a / a.sum(), b / b.sum()
    m = 0.5 * (p + q)
    js = 0.5 * (_kl_bits(p, m) + _kl_bits(q, m))
    agree = int(np.argmax(p)) == int(np.argmax(q))
    metrics = {"top1_agree": float(agree), "js_divergence": js,
               "total_variation": float(0.5 * np.abs(p - q).sum()),
               "confidence_delta": float(q.max() - p.max())}
    disagree = not agree or (tol.js_max is not None and js > tol.js_max)
    return Comparison("probs", js, disagree, metrics)


def _kl_bits(p: np.ndarray, m: np.ndarray) -> float:
    nz = p > 0
    return max(0.0, float((p[nz] * np.log2(p[nz] / m[nz])).sum()))


def _scores(a: np.ndarray, b: np.ndarray, tol: Tolerance, live: Mapping[str, Any],
            cand: Mapping[str, Any]) -> Comparison:
    items_a = live.get("items") or range(a.size)
    items_b = cand.get("items") or range(b.size)
    # Stable sort: ties keep index order on both sides, so equal scores rank equally.
    rank_a = [items_a[i] for i in np.argsort(-a, kind="stable")]
    rank_b = [items_b[i] for i in np.argsort(-b, kind="stable")]
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


def _embedding(a: np.ndarray, b: np.ndarray, tol: Tolerance, *_: Any) -> Comparison:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        distance = 0.0 if na == nb else 1.0
    else:
        distance = min(2.0, max(0.0, 1.0 - float(a @ b) / (na * nb)))
    return Comparison("embedding", distance, distance > tol.cosine_max,
                      {"cosine_distance": distance})


_COMPARATORS = {"scalar": _regression("scalar"), "vector": _regression("vector"),
                "probs": _probs, "scores": _scores, "embedding": _embedding}
