"""Drift of inputs and outputs against a reference profile. Pure code, shared by replay.

A :class:`Profile` holds, per feature, the reference's binning: for a numeric feature the
edges of ``bins`` quantile bins of the reference sample (bins are ``(e[i-1], e[i]]``, with an
open bin below the first edge and above the last), for a categorical one its categories (the
most frequent ``max_categories``, the rest pooled as ``OTHER``; a text feature with more
distinct values than that and than half its reference, such as an id or a free-text message,
is not watched: a window's values would be new whatever happens). A window keeps a
:class:`Histogram` on the same bins: counts, and for numeric bins the least and greatest value
seen, so histograms of partitions, workers and windows merge by addition.

Statistics, each checked against numpy/scipy in the unit tests:

- ``psi``: population stability index on deciles of the reference (the fine bins grouped ten
  by ten by reference mass), proportions floored at ``PSI_FLOOR``; exact for those deciles.
  Ten bins as usual for PSI: on a hundred, a window of 500 identical requests would already
  score about 0.4 from sampling noise alone (about bins x (1/n_ref + 1/n_window)).
- ``js``: Jensen-Shannon distance (base 2, in [0, 1]) of the binned distributions; exact.
- ``ks``: the largest CDF gap at the bin edges. The true two-sample KS statistic lies in
  ``[ks, ks + ks_bound]`` with ``ks_bound`` = the largest mass either side has in one bin.
- ``wasserstein``: W1 between the two histograms with each bin's mass at the centre of the
  values the bin holds on either side; within ``wasserstein_bound`` = sum over bins of half the
  bin's value range times the mass both sides have there (moving mass inside a bin by at most
  half its range moves W1 by at most that much).
- ``ks_p``: the two-sample KS test's p-value for ``ks`` with both sample sizes (the
  asymptotic distribution at n_ref * n_win / (n_ref + n_win), as scipy's ``ks_2samp`` with
  ``method="asymp"``). ``ks`` is a lower bound of the true statistic, so ``ks_p`` is an upper
  bound of the true p-value: binning can only make the test quieter, never louder.
- categorical ``js`` and ``chi2``: Pearson's two-sample statistic of the reference's and the
  window's counts (a 2 x k contingency table, scipy.stats.chi2_contingency without
  continuity correction), which counts the reference's own sampling error, with its
  ``chi2_p`` p-value.
- ``t``, ``t_p``: Welch's two-sample t-test of the means (scipy.stats.ttest_ind_from_stats,
  from each side's exact mean and variance, kept beside the bins), and ``mean_shift``: the
  difference of the means in reference standard deviations.
- ``p``: the feature's test p-value (for a numeric feature the smaller of ``ks_p`` and
  ``t_p``, doubled for the two tests; ``chi2_p`` for a categorical one) and ``effect``: how far the
  distributions are apart in probability (``ks`` for a numeric feature, the total variation
  distance for a categorical one), for an effect-size floor: a huge window detects trivial
  shifts. ``adjust`` corrects the p-values of the features of a model for testing many at
  once (Benjamini-Hochberg or Bonferroni).
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import stats as sps

STATISTICS = ("n", "js", "psi", "ks", "ks_bound", "ks_p", "t", "t_p", "mean_shift",
              "wasserstein", "wasserstein_bound", "chi2", "chi2_p", "p", "effect")
"""What ``drift`` may give for a feature (a rule's ``drift.<feature>.<stat>``)."""
Correction = Literal["bh", "bonferroni", "none"]

__all__ = ["OTHER", "STATISTICS", "Correction", "FeatureProfile", "Histogram", "Profile", "adjust",
           "deciles", "drift", "feature_names", "features_of", "ks_pvalue", "psi"]

OTHER = "__other__"
PSI_FLOOR = 1e-4
MAX_LIST = 32


def features_of(doc: Mapping[str, Any], prefix: str = "") -> dict[str, float | str]:
    """Flatten a JSON document to features: numbers stay numbers, strings and booleans are
    categories, lists of numbers give one feature per element (at most MAX_LIST)."""
    out: dict[str, float | str] = {}
    if type(doc) is not dict:
        _flatten(doc, prefix, out)
        return out
    # The top level inline (this runs for every request): numbers and strings directly,
    # anything nested through _flatten.
    names = feature_names(prefix)
    for k, v in doc.items():
        t = type(v)
        if t is float:
            if -math.inf < v < math.inf:
                out[names[k]] = v
        elif t is int or t is str:
            out[names[k]] = float(v) if t is int else v
        else:
            _flatten(v, names[k], out)
    return out


class _Names(dict[str, str]):
    """``<prefix>.<key>`` for the top-level keys of a document, made once per key (a
    service sends the same few keys in every request). Bounded: a service that sends a new
    key in every request gets fresh strings, not a cache that grows for ever."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.dot = f"{prefix}." if prefix else ""

    def __missing__(self, key: str) -> str:
        name = self.dot + str(key)
        if len(self) < _NAMES_MAX:
            self[key] = name
        return name


class _Prefixes(dict[str, _Names]):
    def __missing__(self, prefix: str) -> _Names:
        names = _Names(prefix)
        if len(self) < _NAMES_MAX:
            self[prefix] = names
        return names


_NAMES_MAX = 4096
_NAMES = _Prefixes()


def feature_names(prefix: str) -> Mapping[str, str]:
    """Feature names under ``prefix``: ``feature_names("inputs")["amount"]`` is
    "inputs.amount" (made once, then looked up)."""
    return _NAMES[prefix]


def _flatten(value: Any, path: str, out: dict[str, float | str]) -> None:
    t = type(value)
    if t is float or t is int:  # the common case first: this runs for every input value
        if -math.inf < value < math.inf:
            out[path] = float(value)
    elif t is str:
        out[path] = value
    elif t is bool:
        out[path] = "true" if value else "false"
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(v, f"{path}.{k}" if path else str(k), out)
    elif isinstance(value, list) and len(value) <= MAX_LIST:
        for i, v in enumerate(value):
            tv = type(v)
            if (tv is float or tv is int) and -math.inf < v < math.inf:
                out[f"{path}[{i}]"] = float(v)
    elif isinstance(value, int | float) and not isinstance(value, bool):  # int/float kinds
        if math.isfinite(value):
            out[path] = float(value)
    elif isinstance(value, str):
        out[path] = value


@dataclass(frozen=True)
class FeatureProfile:
    name: str
    kind: str  # "numeric" | "categorical"
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()
    reference: Histogram = field(default=None)  # type: ignore[assignment]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)
    _edges: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {c: i for i, c in enumerate(self.categories)})
        object.__setattr__(self, "_edges", np.asarray(self.edges, dtype=float))

    def empty(self) -> Histogram:
        n = len(self.edges) + 1 if self.kind == "numeric" else len(self.categories) + 1
        return Histogram(self.kind, [0] * n)

    def bin_of(self, value: float | str) -> int | None:
        """The bin a value falls in; None when the value's type does not fit the feature."""
        if self.kind == "numeric":
            if isinstance(value, str):
                return None
            return bisect.bisect_left(self.edges, value)  # (e[i-1], e[i]] holds value
        if not isinstance(value, str):
            return None
        return self._index.get(value, len(self.categories))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "edges": list(self.edges),
                "categories": list(self.categories), "reference": self.reference.to_dict()}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> FeatureProfile:
        return cls(doc["name"], doc["kind"], tuple(doc["edges"]), tuple(doc["categories"]),
                   Histogram.from_dict(doc["reference"]))


@dataclass
class Histogram:
    """Counts on a feature's bins; numeric bins also keep the range of what they hold, and
    a numeric histogram the mean and the sum of squared deviations of its values (merged as
    Chan et al.'s parallel variance; None when unknown: a histogram of an older version)."""

    kind: str
    counts: list[int]
    lo: list[float] = field(default_factory=list)
    hi: list[float] = field(default_factory=list)
    mean: float | None = None
    m2: float | None = None

    def __post_init__(self) -> None:
        if self.kind == "numeric" and not self.lo:
            self.lo = [math.inf] * len(self.counts)
            self.hi = [-math.inf] * len(self.counts)
        if self.kind == "numeric" and self.mean is None and not any(self.counts):
            self.mean, self.m2 = 0.0, 0.0

    @property
    def total(self) -> int:
        return sum(self.counts)

    def add(self, b: int, value: float | str) -> None:
        self.counts[b] += 1
        if self.kind == "numeric":
            v = float(value)
            if v < self.lo[b]:
                self.lo[b] = v
            if v > self.hi[b]:
                self.hi[b] = v
            self._moments(1, v, 0.0)

    def add_many(self, bins: np.ndarray, values: np.ndarray) -> None:
        """Numeric values with their bins (``searchsorted`` of the edges, side left)."""
        n = len(self.counts)
        self.counts = (np.asarray(self.counts, dtype=np.int64)
                       + np.bincount(bins, minlength=n)).tolist()
        lo, hi = np.asarray(self.lo, dtype=float), np.asarray(self.hi, dtype=float)
        np.minimum.at(lo, bins, values)
        np.maximum.at(hi, bins, values)
        self.lo, self.hi = lo.tolist(), hi.tolist()
        if len(values):
            mean = float(values.mean())
            self._moments(len(values), mean, float(((values - mean) ** 2).sum()))

    def _moments(self, n: int, mean: float, m2: float) -> None:
        """Fold in ``n`` values of that mean and sum of squared deviations (the counts
        already include them)."""
        if self.mean is None or self.m2 is None:
            return
        before = self.total - n
        total = before + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * before * n / total

    def merge(self, other: Histogram) -> Histogram:
        if len(other.counts) != len(self.counts) or other.kind != self.kind:
            raise ValueError("histograms on different bins cannot merge")
        n = other.total
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        if self.kind == "numeric":
            self.lo = [min(a, b) for a, b in zip(self.lo, other.lo, strict=True)]
            self.hi = [max(a, b) for a, b in zip(self.hi, other.hi, strict=True)]
            if other.mean is None or other.m2 is None:
                self.mean = self.m2 = None
            elif n:
                self._moments(n, other.mean, other.m2)
        return self

    @property
    def sd(self) -> float | None:
        """The sample standard deviation of a numeric histogram's values (None: unknown)."""
        n = self.total
        if self.m2 is None or n < 2:
            return None
        return math.sqrt(max(0.0, self.m2) / (n - 1))

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"kind": self.kind, "counts": self.counts}
        if self.kind == "numeric":  # JSON has no infinity: empty bins are null
            doc["lo"] = [v if math.isfinite(v) else None for v in self.lo]
            doc["hi"] = [v if math.isfinite(v) else None for v in self.hi]
            if self.mean is not None:
                doc["mean"], doc["m2"] = self.mean, self.m2
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Histogram:
        if doc["kind"] != "numeric":
            return cls(doc["kind"], list(doc["counts"]))
        lo = [math.inf if v is None else v for v in doc["lo"]]
        hi = [-math.inf if v is None else v for v in doc["hi"]]
        h = cls("numeric", list(doc["counts"]), lo, hi, doc.get("mean"), doc.get("m2"))
        if "mean" not in doc and any(h.counts):  # written before moments were kept
            h.mean = h.m2 = None
        return h


@dataclass(frozen=True)
class Profile:
    """The reference: one FeatureProfile per feature name."""

    features: Mapping[str, FeatureProfile]
    source: str = ""

    @classmethod
    def build(cls, rows: Iterable[Mapping[str, float | str]], *, bins: int = 100,
              max_categories: int = 50, source: str = "") -> Profile:
        """Build from feature rows (``features_of`` of each reference event)."""
        if bins < 2:
            raise ValueError("bins must be at least 2")
        values: dict[str, list[float | str]] = {}
        for row in rows:
            for name, v in row.items():
                values.setdefault(name, []).append(v)
        features: dict[str, FeatureProfile] = {}
        for name, vs in sorted(values.items()):
            numbers = [v for v in vs if not isinstance(v, str)]
            if len(numbers) * 2 >= len(vs):
                arr = np.asarray(numbers, float)
                qs = np.quantile(arr, np.linspace(0, 1, bins + 1)[1:-1], method="lower")
                fp = FeatureProfile(name, "numeric", edges=tuple(np.unique(qs).tolist()))
                sample: list[float | str] = list(numbers)
            else:
                labels = [v for v in vs if isinstance(v, str)]
                counted = Counter(labels)
                if len(counted) > max_categories and 2 * len(counted) > len(labels):
                    # Mostly distinct (ids, free text): a window would hold values the
                    # reference never saw, which is no drift. Not watched.
                    continue
                freq = sorted(counted.items(), key=lambda kv: (-kv[1], kv[0]))
                cats = tuple(c for c, _ in freq[:max_categories])
                fp = FeatureProfile(name, "categorical", categories=cats)
                sample = list(labels)
            ref = fp.empty()
            for v in sample:
                b = fp.bin_of(v)
                if b is not None:
                    ref.add(b, v)
            features[name] = FeatureProfile(fp.name, fp.kind, fp.edges, fp.categories, ref)
        return cls(features, source)

    def histograms(self) -> dict[str, Histogram]:
        return {name: fp.empty() for name, fp in self.features.items()}

    def observe(self, hists: dict[str, Histogram], row: Mapping[str, float | str],
                reference_of: Callable[[str], str] | None = None) -> None:
        """Count one row. ``reference_of`` names the profile feature a row's feature is judged
        against (candidate outputs against the live outputs' reference)."""
        for name, v in row.items():
            fp = self.features.get(reference_of(name) if reference_of else name)
            if fp is None:
                continue
            b = fp.bin_of(v)
            if b is None:
                continue
            h = hists.get(name)
            if h is None:
                h = hists[name] = fp.empty()
            h.add(b, v)

    def observe_rows(self, hists: dict[str, Histogram],
                     rows: Iterable[Mapping[str, float | str]],
                     reference_of: Callable[[str], str] | None = None) -> None:
        """``observe`` for many rows at once, a feature at a time: the same counts and bin
        ranges, numeric features binned with numpy."""
        for name, values in _columns(rows).items():
            fp = self.features.get(reference_of(name) if reference_of else name)
            if fp is None:
                continue
            h = hists.get(name)
            if fp.kind == "numeric":
                numbers = [v for v in values if type(v) is not str]
                if not numbers:
                    continue
                if h is None:
                    h = hists[name] = fp.empty()
                array = np.asarray(numbers, dtype=float)
                h.add_many(np.searchsorted(fp._edges, array, side="left"), array)
            else:
                labels = [v for v in values if type(v) is str]
                if not labels:
                    continue
                if h is None:
                    h = hists[name] = fp.empty()
                index, other = fp._index, len(fp.categories)
                counts = h.counts
                for v in labels:
                    counts[index.get(v, other)] += 1  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source,
                "features": [fp.to_dict() for fp in self.features.values()]}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Profile:
        feats = [FeatureProfile.from_dict(f) for f in doc["features"]]
        return cls({f.name: f for f in feats}, doc.get("source", ""))


def _columns(rows: Iterable[Mapping[str, float | str]]) -> dict[str, list[float | str]]:
    """Rows as columns, each in row order."""
    columns: defaultdict[str, list[float | str]] = defaultdict(list)
    for row in rows:
        for name, v in row.items():
            columns[name].append(v)
    return columns


def drift(reference: Histogram, window: Histogram,
          undefined: list[str] | None = None) -> dict[str, float]:
    """All statistics of one feature; empty when either side has no data. A statistic that
    cannot be computed on these histograms is left out (never NaN) and its name appended to
    ``undefined``."""
    n_ref, n_win = reference.total, window.total
    if n_ref == 0 or n_win == 0:
        return {}
    p = np.asarray(reference.counts, float) / n_ref
    q = np.asarray(window.counts, float) / n_win
    out = {"n": float(n_win), "js": _js_distance(p, q)}
    if reference.kind == "numeric":
        groups = deciles(p)
        out["psi"] = psi(np.bincount(groups, p, 10), np.bincount(groups, q, 10))
        gaps = np.abs(np.cumsum(p) - np.cumsum(q))
        out["ks"] = float(gaps.max())
        out["ks_bound"] = float(np.maximum(p, q).max())
        out["wasserstein"], out["wasserstein_bound"] = _wasserstein(reference, window, p, q)
        out["ks_p"] = out["p"] = ks_pvalue(out["ks"], n_ref, n_win)
        out["effect"] = out["ks"]
        ref_sd, win_sd = reference.sd, window.sd
        if ref_sd and win_sd is not None and reference.mean is not None \
                and window.mean is not None:
            # Welch's t-test on the means: a shift of the location is what KS sees least
            # well; the feature's p is the smaller of the two, Bonferroni for two tests.
            t = sps.ttest_ind_from_stats(window.mean, win_sd, n_win, reference.mean, ref_sd,
                                         n_ref, equal_var=False)
            out["t"], out["t_p"] = float(t.statistic), float(t.pvalue)
            out["mean_shift"] = (window.mean - reference.mean) / ref_sd
            out["p"] = min(1.0, 2 * min(out["ks_p"], out["t_p"]))
    else:
        out["effect"] = float(0.5 * np.abs(p - q).sum())
        table = np.vstack([reference.counts, window.counts]).astype(float)
        table = table[:, table.sum(axis=0) > 0]  # categories neither side has: no column
        if table.shape[1] >= 2:
            res = sps.chi2_contingency(table, correction=False)
            out["chi2"], out["chi2_p"] = float(res.statistic), float(res.pvalue)
            out["p"] = out["chi2_p"]
        elif undefined is not None:
            # One category on both sides together: nothing to test.
            undefined += ["chi2", "chi2_p", "p"]
    bad = [k for k, v in out.items() if not math.isfinite(v)]
    for k in bad:
        del out[k]
    if undefined is not None:
        undefined += bad
    return out


def ks_pvalue(d: float, n_ref: int, n_win: int) -> float:
    """The two-sample KS test's p-value (two-sided, asymptotic), as scipy's ``ks_2samp``
    with ``method="asymp"`` gives it for a statistic ``d`` of samples of these sizes."""
    n = round(n_ref * n_win / (n_ref + n_win))
    return float(min(1.0, max(0.0, sps.kstwo.sf(d, max(1, n)))))


def adjust(pvalues: Sequence[float], method: Correction = "bh") -> list[float]:
    """P-values corrected for testing ``len(pvalues)`` features at once: Benjamini-Hochberg
    (false discovery rate, scipy.stats.false_discovery_control), Bonferroni (family-wise
    error rate), or none."""
    ps = [min(1.0, max(0.0, float(x))) for x in pvalues]
    if not ps or method == "none":
        return ps
    if method == "bonferroni":
        return [min(1.0, x * len(ps)) for x in ps]
    return [float(x) for x in sps.false_discovery_control(ps, method="bh")]


def deciles(p: np.ndarray) -> np.ndarray:
    """For each fine bin, the decile of the reference it belongs to (by its middle's mass)."""
    middle = np.cumsum(p) - p / 2
    return np.clip((middle * 10).astype(int), 0, 9)


def psi(p: np.ndarray, q: np.ndarray) -> float:
    p = np.maximum(p, PSI_FLOOR)
    q = np.maximum(q, PSI_FLOOR)
    return float(((q - p) * np.log(q / p)).sum())


def _js_distance(p: np.ndarray, q: np.ndarray) -> float:
    m = 0.5 * (p + q)
    div = 0.0
    for x in (p, q):
        nz = x > 0
        div += 0.5 * float((x[nz] * np.log2(x[nz] / m[nz])).sum())
    return math.sqrt(max(0.0, div))


def _wasserstein(ref: Histogram, win: Histogram, p: np.ndarray,
                 q: np.ndarray) -> tuple[float, float]:
    lo = np.minimum(ref.lo, win.lo)
    hi = np.maximum(ref.hi, win.hi)
    used = (p > 0) | (q > 0)
    centres = (lo[used] + hi[used]) / 2
    # Bins are ordered and disjoint, so the centres are sorted: W1 = integral of |F - G|.
    cdf_gap = np.abs(np.cumsum(p[used]) - np.cumsum(q[used]))[:-1]
    w1 = float((cdf_gap * np.diff(centres)).sum())
    bound = float(((hi[used] - lo[used]) / 2 * (p[used] + q[used])).sum())
    return w1, bound
