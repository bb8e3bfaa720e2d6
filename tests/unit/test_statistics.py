"""Comparators, the quantile sketch and drift statistics, checked against numpy and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps
from scipy.spatial import distance

from consumers.compare import ComparisonError, Tolerance, Tolerances, compare, rbo
from consumers.drift import Histogram, Profile, adjust, drift, features_of, ks_pvalue, psi
from consumers.sketch import QuantileSketch
from consumers.windows import output_features, request_features, top1_as_live
from schemas import ConfigError

RNG = np.random.default_rng(7)


def probs(n: int) -> list[float]:
    v = RNG.random(n) + 1e-3
    return (v / v.sum()).tolist()


# -- comparators ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 10])
def test_probs_metrics_equal_scipy(n: int) -> None:
    for _ in range(50):
        p, q = probs(n), probs(n)
        c = compare({"kind": "probs", "value": p}, {"kind": "probs", "value": q})
        assert c.metrics["js_divergence"] == pytest.approx(
            distance.jensenshannon(p, q, base=2) ** 2, abs=1e-12)
        assert c.metrics["total_variation"] == pytest.approx(
            0.5 * np.abs(np.subtract(p, q)).sum(), abs=1e-12)
        assert c.metrics["confidence_delta"] == pytest.approx(max(q) - max(p), abs=1e-12)
        agree = int(np.argmax(p)) == int(np.argmax(q))
        assert c.metrics["top1_agree"] == float(agree)
        assert c.disagree is (not agree)
        assert c.score == c.metrics["js_divergence"]


def test_probs_js_threshold_makes_agreeing_answers_disagree() -> None:
    live, cand = {"kind": "probs", "value": [0.9, 0.1]}, {"kind": "probs", "value": [0.6, 0.4]}
    assert not compare(live, cand).disagree
    assert compare(live, cand, Tolerance(js_max=0.01)).disagree


@pytest.mark.parametrize("kind", ["scalar", "vector"])
def test_regression_errors_and_tolerance_equal_numpy(kind: str) -> None:
    tol = Tolerance(atol=1e-3, rtol=0.01)
    for _ in range(200):
        n = 1 if kind == "scalar" else 5
        a = RNG.normal(0, 10, n)
        b = a + RNG.normal(0, 0.05, n) * RNG.integers(0, 2, n)
        live = {"kind": kind, "value": float(a[0]) if kind == "scalar" else a.tolist()}
        cand = {"kind": kind, "value": float(b[0]) if kind == "scalar" else b.tolist()}
        c = compare(live, cand, tol)
        assert c.metrics["abs_error"] == pytest.approx(np.abs(b - a).max(), abs=1e-12)
        assert c.metrics["rel_error"] == pytest.approx((np.abs(b - a) / np.abs(a)).max())
        assert c.disagree is (not np.allclose(b, a, rtol=tol.rtol, atol=tol.atol))
        if kind == "vector":
            assert c.metrics["mean_abs_error"] == pytest.approx(np.abs(b - a).mean())


@pytest.mark.parametrize("dim", [16, 768])
def test_embedding_cosine_distance_equals_scipy(dim: int) -> None:
    for _ in range(50):
        a, b = RNG.normal(size=dim), RNG.normal(size=dim)
        c = compare({"kind": "embedding", "value": a.tolist()},
                    {"kind": "embedding", "value": b.tolist()}, Tolerance(cosine_max=0.5))
        assert c.score == pytest.approx(distance.cosine(a, b), abs=1e-12)
        assert c.disagree == bool(distance.cosine(a, b) > 0.5)


def rbo_reference(s: list[int], t: list[int], p: float) -> float:
    """Webber et al.'s extrapolated RBO written straight from its definition with sets."""
    k = len(s)
    agreement = [len(set(s[:d]) & set(t[:d])) / d for d in range(1, k + 1)]
    x_k = agreement[-1] * k
    return x_k / k * p**k + (1 - p) / p * sum(a * p**d for d, a in
                                                enumerate(agreement, start=1))


@given(st.permutations(list(range(12))), st.permutations(list(range(12))),
       st.sampled_from([0.5, 0.9, 0.98]))
def test_rbo_equals_its_definition(s: list[int], t: list[int], p: float) -> None:
    assert rbo(s, t, p) == pytest.approx(rbo_reference(s, t, p), abs=1e-12)


def test_rbo_bounds_and_scores_comparator() -> None:
    assert rbo([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    assert rbo([1, 2, 3], [4, 5, 6]) == 0.0
    live = {"kind": "scores", "value": [0.9, 0.5, 0.1, 0.3], "items": ["a", "b", "c", "d"]}
    cand = {"kind": "scores", "value": [0.8, 0.9, 0.1, 0.3], "items": ["a", "b", "c", "d"]}
    c = compare(live, cand, Tolerance(top_k=2))
    assert c.metrics["topk_overlap"] == 1.0  # {a, b} both sides
    assert c.disagree  # top-1 a vs b
    assert c.score == pytest.approx(1 - rbo(["a", "b", "d", "c"], ["b", "a", "d", "c"]))


@pytest.mark.parametrize("live,cand,message", [
    ({"kind": "probs", "value": [0.5, 0.5]}, {"kind": "scalar", "value": 1.0}, "kinds differ"),
    ({"kind": "vector", "value": [1.0]}, {"kind": "vector", "value": [1.0, 2.0]},
     "lengths differ"),
    ({"kind": "vector", "value": [1.0]}, {"kind": "vector", "value": [math.nan]}, "non-finite"),
])
def test_incomparable_answers_raise(live: dict, cand: dict, message: str) -> None:
    with pytest.raises(ComparisonError, match=message):
        compare(live, cand)


def test_tolerances_per_model_and_bad_files_refused(tmp_path) -> None:
    path = tmp_path / "tol.toml"
    path.write_text("[default]\nrtol = 0.05\n[models.m1]\ncosine_max = 0.2\n")
    tols = Tolerances.from_file(path)
    assert tols.for_model("other").rtol == 0.05
    assert tols.for_model("m1").cosine_max == 0.2 and tols.for_model("m1").rtol == 0.05
    path.write_text("[default]\nrtoll = 1\n")
    with pytest.raises(ConfigError, match=r"tol.toml: unknown key 'rtoll' in \[default\] "
                                          r"\(did you mean 'rtol'\?\)"):
        Tolerances.from_file(path)
    path.write_text("[defaults]\nrtol = 1\n")  # a table the file does not have
    with pytest.raises(ConfigError, match=r"unknown key 'defaults' \(did you mean 'default'"):
        Tolerances.from_file(path)
    path.write_text("[default]\nrtol = -1\n")
    with pytest.raises(ValueError, match="non-negative"):
        Tolerances.from_file(path)


@settings(max_examples=200)
@given(st.lists(st.floats(0.01, 1), min_size=2, max_size=6).flatmap(
    lambda p: st.tuples(st.just(p), st.lists(st.floats(0.01, 1), min_size=len(p),
                                             max_size=len(p)))))
def test_probs_metrics_are_bounded_and_symmetric(pq: tuple[list[float], list[float]]) -> None:
    p, q = pq
    a = compare({"kind": "probs", "value": p}, {"kind": "probs", "value": q})
    b = compare({"kind": "probs", "value": q}, {"kind": "probs", "value": p})
    assert 0 <= a.metrics["js_divergence"] <= 1 + 1e-12
    assert 0 <= a.metrics["total_variation"] <= 1 + 1e-12
    assert a.metrics["js_divergence"] == pytest.approx(b.metrics["js_divergence"], abs=1e-12)


# -- quantile sketch -----------------------------------------------------------------------


@pytest.mark.parametrize("accuracy", [0.01, 0.05])
def test_sketch_quantiles_within_relative_accuracy_of_numpy(accuracy: float) -> None:
    data = np.concatenate([RNG.lognormal(0, 2, 20_000), np.zeros(300), RNG.random(50) * 1e-3])
    sketch = QuantileSketch(accuracy).extend(data.tolist())
    for q in (0, 0.01, 0.25, 0.5, 0.9, 0.99, 0.999, 1):
        exact = float(np.quantile(data, q, method="lower"))
        assert abs(sketch.quantile(q) - exact) <= accuracy * exact * (1 + 1e-9) + 1e-12, q
    assert sketch.count == data.size and sketch.max == data.max()


@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=300),
       st.lists(st.floats(0, 1e6), max_size=300))
def test_sketch_merge_is_the_sketch_of_the_concatenation(a: list[float], b: list[float]) -> None:
    merged = QuantileSketch().extend(a).merge(QuantileSketch().extend(b))
    whole = QuantileSketch().extend(a + b)
    assert merged.buckets == whole.buckets and merged.zeros == whole.zeros
    assert merged.count == whole.count and merged.max == whole.max and merged.min == whole.min
    assert merged.quantile(0.5) == whole.quantile(0.5)
    assert QuantileSketch.from_dict(merged.to_dict()).buckets == merged.buckets


def test_sketch_refuses_negative_and_nan() -> None:
    for bad in (-1.0, math.nan):
        with pytest.raises(ValueError):
            QuantileSketch().add(bad)
        with pytest.raises(ValueError):
            QuantileSketch().extend([1.0, bad])
    assert QuantileSketch().quantile(0.5) is None
    kept = QuantileSketch()
    with pytest.raises(ValueError):
        kept.extend([2.0, -1.0, 3.0])
    assert kept.count == 1 and kept.sum == 2.0  # what came before the bad value, as add


@given(st.lists(st.floats(0, 1e9) | st.just(0.0) | st.floats(0, 1e-8), max_size=300))
def test_sketch_extend_is_add_one_by_one_to_the_bit(values: list[float]) -> None:
    one_by_one = QuantileSketch()
    for v in values:
        one_by_one.add(v)
    assert QuantileSketch().extend(values).to_dict() == one_by_one.to_dict()


# -- drift ---------------------------------------------------------------------------------


def counts_on(edges: tuple[float, ...], x: np.ndarray) -> np.ndarray:
    """Counts of (e[i-1], e[i]] bins, computed independently of the code under test."""
    below = np.array([(x <= e).sum() for e in edges] + [x.size])
    return np.diff(np.concatenate([[0], below]))


def numeric_case(shift: float, scale: float = 1.0, n_ref: int = 5000, n_win: int = 3000):
    ref = RNG.normal(0, 1, n_ref)
    win = RNG.normal(shift, scale, n_win)
    profile = Profile.build([{"x": float(v)} for v in ref], bins=100)
    hists = profile.histograms()
    for v in win:
        profile.observe(hists, {"x": float(v)})
    return ref, win, profile.features["x"], hists["x"]


@pytest.mark.parametrize("shift,scale", [(0.0, 1.0), (0.3, 1.3), (1.5, 1.0)])
def test_numeric_drift_equals_numpy_scipy_within_stated_bounds(shift: float,
                                                               scale: float) -> None:
    ref, win, fp, hist = numeric_case(shift, scale)
    p = counts_on(fp.edges, ref) / ref.size
    q = counts_on(fp.edges, win) / win.size
    assert fp.reference.counts == counts_on(fp.edges, ref).tolist()
    assert hist.counts == counts_on(fp.edges, win).tolist()
    out = drift(fp.reference, hist)
    # PSI on the reference's deciles: the fine bins' edges are its percentiles.
    dec_edges = np.quantile(ref, np.linspace(0, 1, 11)[1:-1], method="lower")
    pd_, qd = counts_on(tuple(dec_edges), ref) / ref.size, counts_on(tuple(dec_edges),
                                                                      win) / win.size
    pf, qf = np.maximum(pd_, 1e-4), np.maximum(qd, 1e-4)
    assert out["psi"] == pytest.approx(float(((qf - pf) * np.log(qf / pf)).sum()), rel=1e-6)
    assert out["js"] == pytest.approx(distance.jensenshannon(p, q, base=2), abs=1e-9)
    ks = sps.ks_2samp(ref, win).statistic
    assert out["ks"] <= ks + 1e-12 <= out["ks"] + out["ks_bound"] + 1e-12
    if shift == 0 and scale == 1:  # no drift: 100 bins make the bound small
        assert out["ks_bound"] <= 0.03
    w1 = sps.wasserstein_distance(ref, win)
    assert abs(out["wasserstein"] - w1) <= out["wasserstein_bound"] + 1e-12
    assert out["n"] == win.size
    # The KS test with both sample sizes: scipy's asymptotic p-value for our statistic, and
    # never below the p-value of the exact statistic (binning only makes it quieter).
    exact = sps.ks_2samp(ref, win, method="asymp")
    assert out["effect"] == out["ks"]
    # Welch's t-test from the moments kept beside the bins equals scipy's on the values.
    welch = sps.ttest_ind(win, ref, equal_var=False)
    assert out["t"] == pytest.approx(welch.statistic, rel=1e-9)
    assert out["t_p"] == pytest.approx(welch.pvalue, rel=1e-6, abs=1e-300)
    assert out["mean_shift"] == pytest.approx((win.mean() - ref.mean()) / ref.std(ddof=1))
    assert out["p"] == min(1.0, 2 * min(out["ks_p"], out["t_p"]))
    assert out["ks_p"] >= exact.pvalue - 1e-12
    assert ks_pvalue(exact.statistic, ref.size, win.size) == pytest.approx(exact.pvalue,
                                                                          rel=1e-9, abs=1e-300)


def test_psi_orders_shifts() -> None:
    values = [drift(fp.reference, h)["psi"] for *_, fp, h in
              (numeric_case(s) for s in (0.0, 0.5, 2.0))]
    assert values[0] < 0.02 < 0.1 < values[1] < values[2]
    assert psi(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.0


def test_categorical_drift_equals_scipy() -> None:
    cats = ["DE", "FR", "US"]
    ref = RNG.choice(cats, 4000, p=[0.45, 0.35, 0.2])
    win = RNG.choice([*cats, "JP"], 2000, p=[0.2, 0.2, 0.5, 0.1])
    profile = Profile.build([{"c": str(v)} for v in ref])
    hists = profile.histograms()
    for v in win:
        profile.observe(hists, {"c": str(v)})
    fp = profile.features["c"]
    assert fp.kind == "categorical" and set(fp.categories) == set(cats)
    out = drift(fp.reference, hists["c"])
    ref_counts = np.array([(ref == c).sum() for c in fp.categories] + [0])
    win_counts = np.array([(win == c).sum() for c in fp.categories] + [(win == "JP").sum()])
    assert hists["c"].counts == win_counts.tolist()
    assert out["js"] == pytest.approx(distance.jensenshannon(
        ref_counts / ref_counts.sum(), win_counts / win_counts.sum(), base=2), abs=1e-9)
    # Two samples: the reference's counts are a sample too (a 2 x k table).
    expected = sps.chi2_contingency(np.vstack([ref_counts, win_counts]), correction=False)
    assert out["chi2"] == pytest.approx(expected.statistic)
    assert out["chi2_p"] == pytest.approx(expected.pvalue) and out["p"] == out["chi2_p"]
    assert out["effect"] == pytest.approx(0.5 * np.abs(
        ref_counts / ref_counts.sum() - win_counts / win_counts.sum()).sum())


def test_histograms_merge_by_addition_and_round_trip() -> None:
    _, win, fp, whole = numeric_case(0.2)
    a, b = fp.empty(), fp.empty()
    for i, v in enumerate(win):
        (a if i % 2 else b).add(fp.bin_of(float(v)), float(v))
    merged = a.merge(b)
    assert merged.counts == whole.counts and merged.lo == whole.lo and merged.hi == whole.hi
    # Mean and variance merge too (Chan's update), to float rounding.
    assert merged.mean == pytest.approx(win.mean()) == whole.mean
    assert merged.sd == pytest.approx(win.std(ddof=1))
    back = Histogram.from_dict(merged.to_dict())
    assert (back.mean, back.m2) == (merged.mean, merged.m2)
    profile = Profile({"x": fp})
    assert Profile.from_dict(profile.to_dict()).features["x"].reference == fp.reference


def test_features_of_flattens_inputs() -> None:
    doc = {"amount": 3, "country": "DE", "flag": True, "history": [0.1, 0.2],
           "user": {"age": 40, "tier": "gold"}, "big": list(range(100)), "x": math.inf}
    assert features_of(doc, "inputs") == {
        "inputs.amount": 3.0, "inputs.country": "DE", "inputs.flag": "true",
        "inputs.history[0]": 0.1, "inputs.history[1]": 0.2, "inputs.user.age": 40.0,
        "inputs.user.tier": "gold"}


def test_feature_names_are_made_once_and_their_cache_is_bounded() -> None:
    from consumers import drift as drift_module

    assert features_of({"a": 1}, "inputs") == {"inputs.a": 1.0}
    assert features_of({"a": 1}) == {"a": 1.0}  # no prefix, no dot
    # A service that sends a new key in every request: right names, a bounded cache.
    for i in range(drift_module._NAMES_MAX + 50):
        assert features_of({f"k{i}": i}, "inputs") == {f"inputs.k{i}": float(i)}
    assert len(drift_module.feature_names("inputs")) == drift_module._NAMES_MAX


def test_output_features_name_the_side_and_take_the_first_of_equal_maxima() -> None:
    probs = {"kind": "probs", "value": [0.4, 0.4, 0.2], "labels": ["a", "b", "c"]}
    assert output_features(probs, "candidate") == {"candidate.confidence": 0.4,
                                                   "candidate.top1": "a"}
    assert output_features({"kind": "scores", "value": [1, 3, 3]}) == {"top1": "1"}
    assert request_features({"x": 2}, {"kind": "scalar", "value": 1}) == {
        "inputs.x": 2.0, "output.value": 1.0}
    assert top1_as_live({"kind": "scores", "value": [0, 0]},
                        {"kind": "scores", "value": [5, 9, 9]}) == "1"


def test_probs_with_labels_are_compared_by_label_and_without_by_index() -> None:
    live = {"kind": "probs", "value": [0.9, 0.1], "labels": ["legit", "fraud"]}
    same_reordered = {"kind": "probs", "value": [0.1, 0.9], "labels": ["fraud", "legit"]}
    c = compare(live, same_reordered)
    assert not c.disagree and c.score == 0.0 and c.metrics["top1_agree"] == 1.0
    bare = {"kind": "probs", "value": [0.9, 0.1]}  # a service that names no class
    assert not compare(bare, live).disagree and not compare(live, bare).disagree
    with pytest.raises(ComparisonError, match="labels differ"):
        compare(live, {"kind": "probs", "value": [0.5, 0.5], "labels": ["a", "b"]})
    # Scores with item ids on one side only: by position on both (ids never equal indices).
    ranked = {"kind": "scores", "value": [0.3, 0.9, 0.1], "items": ["x", "y", "z"]}
    assert compare({"kind": "scores", "value": [0.2, 0.8, 0.1]}, ranked).metrics[
        "top1_agree"] == 1.0


def test_top1_is_named_as_the_live_answer_names_it() -> None:
    from consumers.windows import top1_as_live

    labelled = {"kind": "probs", "value": [0.2, 0.8], "labels": ["legit", "fraud"]}
    assert top1_as_live({"kind": "probs", "value": [0.5, 0.5]}, labelled) == "1"
    assert top1_as_live({"kind": "probs", "value": [0.5, 0.5], "labels": ["l", "f"]},
                        {"kind": "probs", "value": [0.2, 0.8]}) == "f"
    assert top1_as_live(labelled, labelled) == "fraud"


def test_a_statistic_that_cannot_be_computed_is_left_out_and_counted() -> None:
    from consumers.drift import Histogram, drift

    # One category on both sides: nothing to test, and nothing moved.
    reference = Histogram("categorical", [60, 0, 0])
    window = Histogram("categorical", [25, 0, 0])
    undefined: list[str] = []
    stats = drift(reference, window, undefined)
    assert "chi2" not in stats and "p" not in stats and stats["js"] == 0.0
    assert undefined == ["chi2", "chi2_p", "p"] and stats["effect"] == 0.0
    assert all(math.isfinite(v) for v in stats.values())


def test_corrections_equal_scipy_and_bonferroni() -> None:
    ps = [0.001, 0.02, 0.04, 0.3, 0.9, 0.0002]
    assert adjust(ps, "bh") == pytest.approx(list(sps.false_discovery_control(ps)))
    assert adjust(ps, "bonferroni") == pytest.approx([min(1, p * 6) for p in ps])
    assert adjust(ps, "none") == ps and adjust([], "bh") == []


@settings(max_examples=30, deadline=None)
@given(st.integers(20, 3000), st.integers(20, 3000), st.floats(0.0, 1.0))
def test_ks_pvalue_is_scipys_asymptotic_one(n_ref: int, n_win: int, d: float) -> None:
    n = round(n_ref * n_win / (n_ref + n_win))
    assert ks_pvalue(d, n_ref, n_win) == pytest.approx(float(sps.kstwo.sf(d, n)), abs=1e-12)


def test_histograms_of_an_older_version_have_no_moments() -> None:
    from consumers.drift import Histogram

    _, _, fp, whole = numeric_case(0.2)
    old = whole.to_dict()
    del old["mean"], old["m2"]  # a state written before moments were kept
    stale = Histogram.from_dict(old)
    assert stale.mean is None and stale.sd is None
    assert "t_p" not in drift(fp.reference, stale) and "ks_p" in drift(fp.reference, stale)
    assert fp.empty().merge(stale).mean is None  # unknown stays unknown


def _window_drift(shift_inputs: float, candidate_offset: float) -> dict[str, dict[str, float]]:
    from consumers.windows import WindowAggregate, _reference_name

    rng = np.random.default_rng(5)
    profile = Profile.build({"inputs.x": float(x), "output.confidence": float(c)}
                            for x, c in zip(rng.normal(size=2000), rng.uniform(0.5, 1, 2000),
                                            strict=True))
    agg = WindowAggregate()
    for x, c in zip(rng.normal(shift_inputs, 1, 500), rng.uniform(0.5, 1, 500), strict=True):
        profile.observe(agg.histograms, {"inputs.x": float(x), "output.confidence": float(c)})
        profile.observe(agg.histograms, {"candidate.confidence": float(c) + candidate_offset},
                        _reference_name)
    out = agg._drift(profile, [])
    # The candidate's answers are judged against the live answers of the same window.
    assert out["candidate.confidence"] == drift(agg.histograms["output.confidence"],
                                                agg.histograms["candidate.confidence"])
    return out


def test_a_candidate_answering_as_live_shows_no_output_drift_when_the_inputs_drift() -> None:
    same = _window_drift(shift_inputs=1.0, candidate_offset=0.0)
    assert same["inputs.x"]["p"] < 1e-12  # the inputs moved...
    assert same["candidate.confidence"]["p"] == 1.0  # ...the candidate answers as live does
    assert same["candidate.confidence"]["psi"] == 0.0
    other = _window_drift(shift_inputs=0.0, candidate_offset=0.1)
    assert other["inputs.x"]["p"] > 0.01 and other["candidate.confidence"]["p"] < 1e-6
