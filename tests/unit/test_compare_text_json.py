"""The text and json comparators: hand-computed metrics, tolerances, paths, and properties."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.compare import (
    METRICS,
    ComparisonError,
    FieldDiff,
    Tolerance,
    Tolerances,
    compare,
    json_diff,
    normalize_text,
    text_ops,
)
from schemas import ConfigError

DEFAULT = Tolerance()


def text(live: str, cand: str, tol: Tolerance = DEFAULT) -> Any:
    return compare({"kind": "text", "value": live}, {"kind": "text", "value": cand}, tol)


def jsn(live: Any, cand: Any, tol: Tolerance = DEFAULT) -> Any:
    return compare({"kind": "json", "value": live}, {"kind": "json", "value": cand}, tol)


def tokens(s: str) -> list[str]:
    return re.findall(r"\w+", normalize_text(s))


# -- text ----------------------------------------------------------------------------------


def test_text_metrics_by_hand() -> None:
    # live  tokens: the cat sat on the mat  (6)    candidate: the cat sat on a mat  (6)
    # bag overlap: the (min 2,1 = 1), cat, sat, on, mat = 5 -> P = R = 5/6, F1 = 5/6
    # LCS: the cat sat on mat = 5 -> ROUGE-L P = R = 5/6, F = 5/6
    # characters: "the" -> "a" is 1 substitution + 2 deletions = 3 edits; longer string 22
    # characters -> 3/22
    c = text("the cat sat on the mat", "the cat sat on a mat")
    assert c.kind == "text"
    assert c.metrics["exact_match"] == 0.0
    assert c.metrics["token_f1"] == pytest.approx(5 / 6)
    assert c.metrics["rouge_l"] == pytest.approx(5 / 6)
    assert c.metrics["edit_distance"] == pytest.approx(3 / 22)
    assert c.metrics["length_ratio"] == 1.0
    assert c.score == pytest.approx(1 / 6)
    assert not c.disagree


def test_rouge_l_follows_order_token_f1_does_not() -> None:
    # Same bag of 4 tokens -> F1 = 1; reversed order -> LCS = 1 -> ROUGE-L = 2*1/(4+4) = 0.25.
    # Candidate has 2 tokens "a b" against 4: overlap 2 -> F1 = 2*2/6; LCS 2 -> same; ratio 0.5.
    c = text("a b c d", "d c b a")
    assert c.metrics["token_f1"] == 1.0
    assert c.metrics["rouge_l"] == pytest.approx(0.25)
    c = text("a b c d", "a b")
    assert c.metrics["token_f1"] == pytest.approx(2 / 3)
    assert c.metrics["rouge_l"] == pytest.approx(2 / 3)
    assert c.metrics["length_ratio"] == 0.5


def test_token_f1_counts_multisets() -> None:
    # live "a a a b" (4), candidate "a b b" (3): overlap a: min(3,1) = 1, b: min(1,2) = 1 -> 2;
    # P = 2/3, R = 2/4, F1 = 2PR/(P+R) = 4/7.
    assert text("a a a b", "a b b").metrics["token_f1"] == pytest.approx(4 / 7)


@pytest.mark.parametrize(("live", "cand"), [
    ("Hello   World", " hello world\n"),        # case, whitespace runs, strip
    ("\ufb01ne", "fine"),                        # the "fi" ligature under NFKC
    ("\uff21\uff22\uff23", "abc"),                # full-width letters under NFKC
    ("STRASSE", "stra\u00dfe"),                  # casefold: sharp s is "ss"
    ("tab\tand\u00a0nbsp", "TAB AND NBSP"),      # any whitespace is one space
])
def test_normalisation_makes_an_exact_match(live: str, cand: str) -> None:
    c = text(live, cand)
    assert c.metrics["exact_match"] == 1.0
    assert c.metrics["edit_distance"] == 0.0
    assert c.metrics["token_f1"] == 1.0
    assert c.score == 0.0


def test_normalize_text() -> None:
    assert normalize_text("  \ufb01 The\t\tEND  ") == "fi the end"


def test_empty_texts() -> None:
    c = text("", "")
    assert c.metrics == {"exact_match": 1.0, "edit_distance": 0.0, "token_f1": 1.0,
                         "rouge_l": 1.0, "length_ratio": 0.0}
    assert not c.disagree
    for a, b in [("", "an answer"), ("an answer", "")]:
        c = text(a, b)
        assert c.metrics["token_f1"] == c.metrics["rouge_l"] == 0.0
        assert c.metrics["edit_distance"] == 1.0
        assert c.score == 1.0 and c.disagree
    assert text("", "an answer").metrics["length_ratio"] == 2.0
    # Punctuation only: no tokens on either side, so the token metrics call it a match.
    c = text("!!!", "")
    assert c.metrics["token_f1"] == 1.0 and c.metrics["exact_match"] == 0.0


def test_tolerance_decides_text_disagreement() -> None:
    live, cand = "the cat sat on the mat", "the cat sat on a mat"  # F1 5/6, edit 3/22
    assert not text(live, cand).disagree
    assert text(live, cand, Tolerance(min_token_f1=0.9)).disagree
    assert not text(live, cand, Tolerance(min_token_f1=5 / 6)).disagree
    assert text(live, cand, Tolerance(max_edit_distance=0.1)).disagree
    assert not text(live, cand, Tolerance(max_edit_distance=0.2)).disagree
    assert text("yes", "no").disagree


def test_text_ops_show_the_original_words() -> None:
    # Un-normalised words: case and punctuation show, and "mat" != "mat!".
    assert text_ops("The  cat sat on the mat", "The cat sat on a mat!") == [
        ("equal", "The cat sat on", "The cat sat on"), ("replace", "the mat", "a mat!")]
    assert text_ops("the  cat sat on the mat", "the cat sat on a mat") == [
        ("equal", "the cat sat on", "the cat sat on"), ("replace", "the", "a"),
        ("equal", "mat", "mat")]
    assert text_ops("a b", "a b c") == [("equal", "a b", "a b"), ("insert", "", "c")]
    assert text_ops("a b c", "a c") == [("equal", "a", "a"), ("delete", "b", ""),
                                        ("equal", "c", "c")]
    assert text_ops("", "") == []


def test_text_values_must_be_strings() -> None:
    with pytest.raises(ComparisonError, match="strings"):
        compare({"kind": "text", "value": 3}, {"kind": "text", "value": "3"})
    with pytest.raises(ComparisonError):
        compare({"kind": "text", "value": "a"}, {"kind": "text", "value": None})


def test_kinds_differ() -> None:
    with pytest.raises(ComparisonError, match="kinds differ"):
        compare({"kind": "text", "value": "a"}, {"kind": "json", "value": "a"})


def test_metric_names_are_listed() -> None:
    for name in ("exact_match", "edit_distance", "token_f1", "rouge_l", "length_ratio",
                 "field_difference_rate", "fields_compared", "fields_different",
                 "fields_missing", "fields_extra"):
        assert name in METRICS
    assert set(text("a", "b").metrics) <= set(METRICS)
    assert len(set(METRICS)) == len(METRICS)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_text_against_itself(s: str) -> None:
    c = text(s, s)
    assert c.score == 0.0
    assert c.metrics["exact_match"] == 1.0
    assert c.metrics["edit_distance"] == 0.0
    assert c.metrics["token_f1"] == c.metrics["rouge_l"] == 1.0
    assert not c.disagree


words = st.lists(st.sampled_from(["a", "B", "c", "the", "Ⅸ", "ﬁ", ".", ",", "  ", "\t"]),
                 max_size=12).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(words, st.text()), st.one_of(words, st.text()))
def test_text_metrics_symmetric_and_bounded(a: str, b: str) -> None:
    ab, ba = text(a, b).metrics, text(b, a).metrics
    for name in ("token_f1", "rouge_l", "edit_distance", "exact_match"):
        assert ab[name] == ba[name]
        assert 0.0 <= ab[name] <= 1.0
    assert ab["rouge_l"] <= ab["token_f1"] + 1e-12  # a common subsequence is a common bag
    assert ab["length_ratio"] == len(tokens(b)) / max(len(tokens(a)), 1)
    assert all(math.isfinite(v) for v in ab.values())
    # The diff's segments put both texts back together, word for word.
    ops = text_ops(a, b)
    assert " ".join(x for _, x, _ in ops if x) == " ".join(a.split())
    assert " ".join(y for _, _, y in ops if y) == " ".join(b.split())
    assert all(tag == "equal" or x != y for tag, x, y in ops)


# -- json ----------------------------------------------------------------------------------


def statuses(live: Any, cand: Any, tol: Tolerance = DEFAULT) -> dict[str, str]:
    return {d.path: d.status for d in json_diff(live, cand, tol)}


def test_changed_missing_and_extra_fields() -> None:
    live = {"name": "ann", "age": 30, "city": "oslo"}
    cand = {"name": "ann", "age": 31, "zip": "0150"}
    assert json_diff(live, cand) == [
        FieldDiff("$.age", "different", 30, 31),
        FieldDiff("$.city", "missing", "oslo", None),
        FieldDiff("$.name", "equal", "ann", "ann"),
        FieldDiff("$.zip", "extra", None, "0150"),
    ]
    c = jsn(live, cand)
    assert c.kind == "json"
    assert c.metrics["fields_compared"] == 4.0
    assert c.metrics["fields_different"] == 1.0
    assert c.metrics["fields_missing"] == 1.0
    assert c.metrics["fields_extra"] == 1.0
    assert c.metrics["field_difference_rate"] == c.score == 0.75
    assert c.metrics["field:$.name"] == 0.0 and c.metrics["field:$.age"] == 1.0
    assert c.metrics["field:$.city"] == c.metrics["field:$.zip"] == 1.0
    assert c.disagree


def test_identical_documents_agree() -> None:
    doc = {"a": [1, {"b": None, "c": [True, "x"]}], "d": {}, "e": []}
    c = jsn(doc, copy.deepcopy(doc))
    assert c.score == 0.0 and not c.disagree
    assert c.metrics["fields_compared"] == 6.0  # 1, null, true, "x", {}, []
    assert statuses(doc, doc) == dict.fromkeys(
        ["$.a[0]", "$.a[1].b", "$.a[1].c[0]", "$.a[1].c[1]", "$.d", "$.e"], "equal")


def test_numbers_within_and_beyond_tolerance() -> None:
    tol = Tolerance(atol=0.0, rtol=0.01)
    assert statuses({"p": 100}, {"p": 100.5}, tol) == {"$.p": "equal"}   # |0.5| <= 1.0
    assert statuses({"p": 100}, {"p": 102}, tol) == {"$.p": "different"}  # |2| > 1.0
    assert statuses({"p": 1}, {"p": 1.0}) == {"$.p": "equal"}  # int and float: both numbers
    assert not jsn({"p": 100}, {"p": 100.5}, tol).disagree


def test_bool_is_not_a_number() -> None:
    assert statuses({"a": True}, {"a": 1}) == {"$.a": "different"}
    assert statuses({"a": 0}, {"a": False}) == {"$.a": "different"}
    assert statuses({"a": None}, {"a": 0}) == {"$.a": "different"}
    assert statuses({"a": "1"}, {"a": 1}) == {"$.a": "different"}


def test_type_change_is_one_entry_holding_both_subtrees() -> None:
    live = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert json_diff(live, {"a": 5, "d": 1}) == [
        FieldDiff("$.a", "different", {"b": 1, "c": [1, 2]}, 5),
        FieldDiff("$.d", "equal", 1, 1)]
    assert json_diff({"a": [1]}, {"a": {"0": 1}}) == [
        FieldDiff("$.a", "different", [1], {"0": 1})]
    assert statuses({"a": []}, {"a": {}}) == {"$.a": "different"}


def test_empty_containers() -> None:
    assert statuses({}, {}) == {"$": "equal"}
    assert statuses([], []) == {"$": "equal"}
    # Empty against non-empty of the same type: only the new leaves show.
    assert statuses({"tags": []}, {"tags": ["x"]}) == {"$.tags[0]": "extra"}
    assert statuses({"a": 1}, {}) == {"$.a": "missing"}
    assert json_diff({"a": {}}, {}) == [FieldDiff("$.a", "missing", {}, None)]


def test_root_scalars() -> None:
    assert json_diff(3, 3) == [FieldDiff("$", "equal", 3, 3)]
    assert json_diff(None, None) == [FieldDiff("$", "equal", None, None)]
    assert jsn("a", "b").metrics["field:$"] == 1.0


def test_arrays_by_position_and_as_sets() -> None:
    live = {"tags": ["a", "b", "c"]}
    cand = {"tags": ["c", "a", "b"]}
    assert statuses(live, cand) == {"$.tags[0]": "different", "$.tags[1]": "different",
                                    "$.tags[2]": "different"}
    as_set = Tolerance(sets=("$.tags",))
    assert json_diff(live, cand, as_set) == [FieldDiff("$.tags", "equal", live["tags"],
                                                       cand["tags"])]
    assert not jsn(live, cand, as_set).disagree
    # Multisets: counts matter; elements are compared as canonical JSON (key order free).
    assert statuses({"t": ["a", "a", "b"]}, {"t": ["a", "b", "b"]},
                    Tolerance(sets=("$.t",))) == {"$.t": "different"}
    assert statuses({"t": [{"x": 1, "y": 2}, 3]}, {"t": [3, {"y": 2, "x": 1}]},
                    Tolerance(sets=("$.t",))) == {"$.t": "equal"}
    # [*] in a set pattern; a missing set array is one entry.
    tol = Tolerance(sets=("$.items[*].tags",))
    live2 = {"items": [{"tags": [1, 2]}, {"tags": [3, 4]}]}
    cand2 = {"items": [{"tags": [2, 1]}, {"tags": [3, 5]}]}
    assert statuses(live2, cand2, tol) == {"$.items[0].tags": "equal",
                                           "$.items[1].tags": "different"}
    assert statuses(live2, {"items": [{}, {"tags": [4, 3]}]}, tol) == {
        "$.items[0].tags": "missing", "$.items[1].tags": "equal"}


def test_ignore_paths_with_any_index() -> None:
    live = {"id": "r1", "ts": 10, "items": [{"id": 1, "price": 2.0}, {"id": 2, "price": 3.0}],
            "meta": {"host": {"name": "a", "pid": 1}}}
    cand = {"id": "r2", "ts": 11, "items": [{"id": 7, "price": 2.0}, {"id": 8, "price": 3.0}],
            "meta": {"host": {"name": "b"}, "extra": True}}
    tol = Tolerance(ignore=("$.id", "$.ts", "$.items[*].id", "$.meta"))
    assert statuses(live, cand, tol) == {"$.items[0].price": "equal",
                                         "$.items[1].price": "equal"}
    c = jsn(live, cand, tol)
    assert not c.disagree and c.metrics["fields_compared"] == 2.0
    # Without [*] only the named index is ignored.
    assert statuses(live, cand, Tolerance(ignore=("$.id", "$.ts", "$.items[0].id",
                                                  "$.meta")))["$.items[1].id"] == "different"
    assert jsn({"id": 1}, {"id": 2}, Tolerance(ignore=("$",))).metrics["fields_compared"] == 0


def test_odd_keys_are_quoted() -> None:
    live = {"odd key": 1, "a[1]": [5], "0": 2, "ok_1": 3, "é": 4}
    paths = [d.path for d in json_diff(live, live)]
    assert paths == sorted(['$["odd key"]', '$["a[1]"][0]', '$["0"]', "$.ok_1", '$["é"]'])
    assert statuses({'say "hi"': 1}, {}) == {'$["say \\"hi\\""]': "missing"}
    tol = Tolerance(ignore=('$["odd key"]',))
    assert '$["odd key"]' not in statuses(live, live, tol)


def test_field_metrics_collapse_indices() -> None:
    live = {"items": [{"price": 1, "name": "a"}, {"price": 2, "name": "b"}], "a[1]": [0, 0]}
    cand = {"items": [{"price": 1, "name": "a"}, {"price": 9, "name": "b"}], "a[1]": [0, 1]}
    m = jsn(live, cand).metrics
    fields = {k: v for k, v in m.items() if k.startswith("field:")}
    # A quoted key that looks like an index stays as it is.
    assert fields == {"field:$.items[*].price": 1.0, "field:$.items[*].name": 0.0,
                      'field:$["a[1]"][*]': 1.0}


def test_field_metrics_are_capped_at_64() -> None:
    live = {f"f{i:03d}": i for i in range(100)}
    cand = {f"f{i:03d}": i + (1000 if i % 2 else 0) for i in range(100)}  # odd ones differ
    m = jsn(live, cand).metrics
    fields = {k: v for k, v in m.items() if k.startswith("field:")}
    assert list(fields) == [f"field:$.f{i:03d}" for i in range(64)]  # the first 64, sorted
    assert fields == {f"field:$.f{i:03d}": float(i % 2) for i in range(64)}
    # The counts still cover every field.
    assert m["fields_different"] == 50.0 and m["fields_compared"] == 100.0


def test_max_field_difference() -> None:
    live, cand = {"a": 1, "b": 2, "c": 3, "d": 4}, {"a": 1, "b": 2, "c": 3, "d": 5}
    assert jsn(live, cand).disagree
    assert jsn(live, cand).score == 0.25
    assert not jsn(live, cand, Tolerance(max_field_difference=0.3)).disagree
    assert not jsn(live, cand, Tolerance(max_field_difference=0.25)).disagree
    assert jsn(live, cand, Tolerance(max_field_difference=0.2)).disagree


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_json_numbers(bad: float) -> None:
    with pytest.raises(ComparisonError, match="non-finite"):
        jsn({"a": [1, {"b": bad}]}, {"a": 1})
    with pytest.raises(ComparisonError, match="non-finite"):
        jsn(1, bad)


def test_values_that_are_not_json() -> None:
    with pytest.raises(ComparisonError):
        jsn({"a": {1, 2}}, {"a": [1, 2]})
    with pytest.raises(ComparisonError):
        jsn({1: "a"}, {"1": "a"})


def test_field_diff_is_frozen() -> None:
    d = json_diff(1, 2)[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.status = "equal"  # type: ignore[misc]


def test_deep_documents_do_not_recurse() -> None:
    live: Any = 1
    cand: Any = 2
    for _ in range(5000):  # beyond the recursion limit
        live, cand = {"a": [live]}, {"a": [cand]}
    c = jsn(live, cand)
    assert c.metrics["fields_compared"] == c.metrics["fields_different"] == 1.0
    assert list(c.metrics)[-1] == "field:$" + ".a[*]" * 5000


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=25)


def key_path(parent: str, key: str) -> str:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return f"{parent}.{key}"
    return f"{parent}[{json.dumps(key, ensure_ascii=False)}]"


def objects(v: Any, path: str = "$") -> list[tuple[str, Any]]:
    """Every non-empty object in a document, with its path."""
    found = [(path, v)] if isinstance(v, dict) and v else []
    if isinstance(v, dict):
        for k, x in v.items():
            found += objects(x, key_path(path, k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            found += objects(x, f"{path}[{i}]")
    return found


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_json_against_itself(doc: Any) -> None:
    c = jsn(doc, copy.deepcopy(doc))
    assert c.score == 0.0 and not c.disagree
    assert c.metrics["fields_different"] == c.metrics["fields_missing"] == 0.0
    assert all(v == 0.0 for k, v in c.metrics.items() if k.startswith("field:"))
    diffs = json_diff(doc, doc)
    assert [d.path for d in diffs] == sorted({d.path for d in diffs})  # sorted and unique


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=4), json_values, min_size=1, max_size=4), st.data())
def test_removed_key_is_missing_and_extra_the_other_way(doc: dict[str, Any],
                                                         data: st.DataObject) -> None:
    live = copy.deepcopy(doc)
    cand = copy.deepcopy(doc)
    # The same object in both copies: found by path in each.
    index = data.draw(st.integers(0, len(objects(live)) - 1))
    path, obj = objects(cand)[index]
    key = data.draw(st.sampled_from(sorted(obj)))
    del obj[key]
    removed = key_path(path, key)

    def under(p: str) -> bool:
        return p == removed or p.startswith((removed + ".", removed + "["))

    off = [d for d in json_diff(live, cand) if d.status != "equal"]
    assert off and all(d.status == "missing" and under(d.path) for d in off)
    back = [d for d in json_diff(cand, live) if d.status != "equal"]
    assert [d.path for d in back] == [d.path for d in off]
    assert all(d.status == "extra" and d.live is None for d in back)
    assert jsn(live, cand).disagree
    assert jsn(live, cand).metrics["fields_missing"] == len(off)


# -- configuration -------------------------------------------------------------------------


def test_tolerances_with_paths() -> None:
    tols = Tolerances.from_dict({
        "default": {"ignore": ["$.id", "$.items[*].ts", '$["odd key"]'], "sets": ["$.tags"],
                    "min_token_f1": 0.7},
        "models": {"m": {"max_field_difference": 0.1, "max_edit_distance": 1}}})
    assert tols.default.ignore == ("$.id", "$.items[*].ts", '$["odd key"]')
    assert tols.default.sets == ("$.tags",)
    assert tols.default.min_token_f1 == 0.7
    m = tols.for_model("m")
    assert m.ignore == tols.default.ignore  # an override starts from the default
    assert m.max_field_difference == 0.1 and m.max_edit_distance == 1


def test_tolerances_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "tol.toml"
    path.write_text('[default]\nignore = ["$.request_id"]\n'
                    '[models.chat]\nmin_token_f1 = 0.8\nsets = ["$.labels[*]"]\n')
    tols = Tolerances.from_file(path)
    assert tols.default.ignore == ("$.request_id",)
    assert tols.for_model("chat").sets == ("$.labels[*]",)
    assert tols.for_model("chat").min_token_f1 == 0.8


@pytest.mark.parametrize(("table", "match"), [
    ({"ignore": "$.id"}, r"\[default\] ignore: must be a list of JSON paths"),
    ({"ignore": {"a": 1}}, r"ignore: must be a list"),
    ({"ignore": ["id"]}, r"\[default\] ignore: must be JSON paths.*'id'"),
    ({"ignore": [""]}, r"ignore: must be JSON paths"),
    ({"sets": [3]}, r"\[default\] sets: must be JSON paths.*3"),
    ({"sets": ["$.odd key"]}, r"sets: must be JSON paths"),
    ({"min_token_f1": 2}, r"\[default\] min_token_f1: must be within \[0, 1\]"),
    ({"max_edit_distance": 1.5}, r"max_edit_distance: must be within"),
    ({"max_field_difference": -0.1}, r"max_field_difference: must be a non-negative"),
    ({"min_token_f1": "high"}, r"min_token_f1: must be a non-negative number"),
    ({"ignored": ["$.id"]}, r"unknown key 'ignored'.*did you mean 'ignore'"),
])
def test_bad_tolerances(table: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Tolerances.from_dict({"default": table}, source="tol.toml")


def test_semantic_similarity_is_optional_and_loads_offline() -> None:
    """The ``semantic`` extra (installed with ``dev``): WordLlama's bundled weights, no
    network. A paraphrase scores higher than an unrelated text; it only decides with
    ``min_semantic``."""
    from consumers.compare import semantic_similarity

    assert semantic_similarity("", "") == 1.0
    near = semantic_similarity("where is my parcel", "where is my package")
    far = semantic_similarity("where is my parcel", "refund for a broken lamp")
    assert near > far + 0.2 and -1.0 <= far <= near <= 1.0
    live = {"kind": "text", "value": "where is my parcel"}
    cand = {"kind": "text", "value": "where is my package"}
    plain = compare(live, cand, Tolerance(min_token_f1=0.5))
    assert "semantic_similarity" not in plain.metrics and not plain.disagree
    strict = compare(live, cand, Tolerance(min_token_f1=0.5, min_semantic=0.9))
    assert strict.metrics["semantic_similarity"] == pytest.approx(near, abs=1e-6)
    assert strict.disagree
    tol = Tolerances.from_dict({"models": {"chat": {"min_semantic": 0.4}}})
    assert tol.for_model("chat").min_semantic == 0.4
    with pytest.raises(ConfigError, match=r"within \[0, 1\]"):
        Tolerances.from_dict({"default": {"min_semantic": 1.5}})


def test_loading_the_embeddings_leaves_the_logging_configuration_alone() -> None:
    import logging
    import subprocess
    import sys

    code = ("import logging\nfrom consumers.compare import semantic_similarity\n"
            "semantic_similarity('a b', 'a c')\n"
            "r = logging.getLogger()\nprint(len(r.handlers), r.level)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.split() == ["0", str(logging.WARNING)], out.stderr
