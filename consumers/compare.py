"""Per-request comparators: how differently the candidate answered, by output kind.

Pure code (no Kafka, no Faust): the join app and offline replay call the same
``compare``. Outputs are the wire documents of ``schemas.records.ModelOutput`` as plain dicts.

Every comparison has one ``score`` (0 = identical, larger = further apart; what window quantiles
and exemplars rank by), a ``disagree`` verdict under the model's tolerances, and named metrics:

=========  ==================================================  ======================  ============
kind       metrics                                             disagree when           score
=========  ==================================================  ======================  ============
scalar     abs_error, rel_error                                |c-l| > atol+rtol*|l|   abs_error
vector     abs_error (max), mean_abs_error, rel_error (max)    any component as above  abs_error
probs      top1_agree, js_divergence (bits), total_variation,  top-1 class differs,    js_div.
           confidence_delta (candidate - live)                 or JS > js_max if set
scores     topk_overlap, rbo (rank-biased overlap, extrapol.)  top-1 item differs, or  1 - rbo
                                                               overlap < min_overlap
embedding  cosine_distance                                     > cosine_max            cos. dist.
text       exact_match, edit_distance (normalised Levensh-     F1 < min_token_f1, or   1 - token_f1
           tein, 0..1), token_f1 (bag of tokens, SQuAD),       edit_distance > max_
           rouge_l (LCS F-measure), length_ratio (cand/live)   edit_distance if set
json       fields_compared, fields_different, fields_missing,  any field not equal;    diff. rate
           fields_extra, field_difference_rate, and            with max_field_differ-
           field:<path> (1 when that field differs)            ence: rate above it
=========  ==================================================  ======================  ============

text: both sides are normalised (``normalize_text``: Unicode NFKC, casefold, whitespace runs
collapsed to one space, stripped) before every metric; tokens are the ``\\w+`` runs of the
normalised text (punctuation dropped). Both token lists empty count as a perfect match.
With ``min_semantic`` set, also ``semantic_similarity``: the cosine of the two texts'
sentence embeddings (the optional ``semantic`` extra; the core never needs it).

json: a field-level diff by JSON path (``json_diff``): ``$`` the root, ``$.name`` an object
key (``$["odd key"]``, JSON-quoted, when the key is not an identifier), ``$.a[0]`` an array
position. Leaves are scalars and empty objects/arrays (an empty one against a non-empty one
of the same type just contributes nothing); a type change at a path is one "different" entry
there holding both subtrees. Numbers are equal within atol + rtol*|live| (a bool is not a
number). ``Tolerance.ignore`` paths (``[*]`` any index) are left out with everything under
them; ``Tolerance.sets`` arrays are compared as multisets of canonical JSON elements (exact,
no number tolerance), as one entry. The ``field:<path>`` metrics name paths with indices
collapsed (``$.items[*].price``) and are capped at the first 64 in sorted order, so a wide
document cannot flood the window's metrics.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import orjson
from rapidfuzz.distance import LCSseq, Levenshtein

from consumers.config import FromToml
from schemas import ShadowstreamError
from schemas.exceptions import ConfigError, refuse_unknown

__all__ = [
    "METRICS",
    "Comparison",
    "ComparisonError",
    "FieldDiff",
    "Tolerance",
    "Tolerances",
    "compare",
    "json_diff",
    "json_leaves",
    "normalize_text",
    "rbo",
    "text_ops",
    "text_tokens",
]

METRICS = ("abs_error", "rel_error", "mean_abs_error", "top1_agree", "js_divergence",
           "total_variation", "confidence_delta", "topk_overlap", "rbo", "cosine_distance",
           "exact_match", "edit_distance", "token_f1", "rouge_l", "length_ratio",
           "field_difference_rate", "fields_compared", "fields_different", "fields_missing",
           "fields_extra", "semantic_similarity")
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
    min_token_f1: float = 0.5
    """text: disagree when the token F1 is below this."""
    max_edit_distance: float | None = None
    """text: also disagree when the normalised edit distance exceeds this."""
    min_semantic: float | None = None
    """text: also disagree when the cosine similarity of the two texts' sentence embeddings
    is below this (the ``semantic`` extra: WordLlama's static embeddings, loaded from its
    wheel, about 0.1 ms a pair on a CPU)."""
    ignore: tuple[str, ...] = ()
    """json: paths expected to differ (ids, timestamps), ``[*]`` any index; with their
    subtrees."""
    sets: tuple[str, ...] = ()
    """json: array paths (``[*]`` any index) compared as multisets instead of by position."""
    max_field_difference: float | None = None
    """json: disagree only when the field difference rate exceeds this (else on any field)."""


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


_PATH_KEYS = ("ignore", "sets")
_UNIT_KEYS = ("min_token_f1", "max_edit_distance", "max_field_difference", "min_semantic")
_PATTERN = re.compile(r'\$(?:\.[A-Za-z_][A-Za-z0-9_]*|\[(?:\d+|\*|"(?:[^"\\]|\\.)*")\])*')


def _tolerance(base: Tolerance, table: Any, source: str, where: str) -> Tolerance:
    if not isinstance(table, Mapping):
        raise ConfigError(source, "must be a table", key=where)
    refuse_unknown(source, table, (f.name for f in fields(Tolerance)), where=where)
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key in _PATH_KEYS:
            values[key] = _patterns(value, source, f"{where} {key}")
            continue
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0 \
                or not math.isfinite(value):
            raise ConfigError(source, f"must be a non-negative number, got {value!r}",
                              key=f"{where} {key}")
        if key in _UNIT_KEYS and value > 1:
            raise ConfigError(source, f"must be within [0, 1], got {value!r}",
                              key=f"{where} {key}")
        if key == "min_semantic" and importlib.util.find_spec("wordllama") is None:
            raise ConfigError(source, "needs the semantic extra: pip install "
                                      "'shadowstream[semantic]'", key=f"{where} {key}")
        values[key] = value
    return replace(base, **values)


def is_json_path(path: str) -> bool:
    """Whether ``path`` is a JSON path as fields are named (``$.a.b[0]``, ``$["odd key"]``,
    ``[*]`` for any index)."""
    return _PATTERN.fullmatch(path) is not None


def _patterns(value: Any, source: str, key: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ConfigError(source, f"must be a list of JSON paths, got {value!r}", key=key)
    for item in value:
        # Checked against the path grammar: a pattern that can never match is a typo.
        if not isinstance(item, str) or not _PATTERN.fullmatch(item):
            raise ConfigError(source, f"must be JSON paths like \"$.items[*].id\" (keys that "
                              f"are not identifiers as $[\"key\"]), got {item!r}", key=key)
    return tuple(value)


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
    if kind in ("text", "json"):  # not numeric lists: they check their own values
        return fn(a, b, tol, live, candidate)
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


# -- text ---------------------------------------------------------------------------------

_WHITESPACE = re.compile(r"\s+")
_TOKEN = re.compile(r"\w+")


def normalize_text(text: str) -> str:
    """The text as compared: Unicode NFKC, casefolded, whitespace runs collapsed, stripped."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def text_tokens(text: str) -> list[str]:
    """The words a text is compared by: ``\\w+`` runs of its normalised form."""
    return _TOKEN.findall(normalize_text(text))


def _text(a: Any, b: Any, tol: Tolerance, *_: Any) -> Comparison:
    if not isinstance(a, str) or not isinstance(b, str):
        raise ComparisonError(f"text values must be strings: live {type(a).__name__}, "
                              f"candidate {type(b).__name__}")
    na, nb = normalize_text(a), normalize_text(b)
    ta, tb = _TOKEN.findall(na), _TOKEN.findall(nb)
    total = len(ta) + len(tb)
    # F1 and ROUGE-L's F-measure written as 2*match/(|a|+|b|): the same as 2PR/(P+R), and
    # exactly symmetric in floating point.
    common = sum((Counter(ta) & Counter(tb)).values())
    f1 = 2 * common / total if total else 1.0
    rouge = 2 * LCSseq.similarity(ta, tb) / total if total else 1.0
    edit = Levenshtein.normalized_distance(na, nb)
    metrics = {"exact_match": float(na == nb), "edit_distance": edit, "token_f1": f1,
               "rouge_l": rouge, "length_ratio": len(tb) / max(len(ta), 1)}
    disagree = f1 < tol.min_token_f1 or (tol.max_edit_distance is not None and
                                         edit > tol.max_edit_distance)
    if tol.min_semantic is not None:
        similarity = semantic_similarity(na, nb)
        metrics["semantic_similarity"] = similarity
        disagree = disagree or similarity < tol.min_semantic
    return Comparison("text", 1.0 - f1, disagree, metrics)


def semantic_similarity(a: str, b: str) -> float:
    """Cosine similarity of two texts' sentence embeddings, -1 to 1 (1 for two empty texts);
    needs the ``semantic`` extra."""
    if not a.strip() and not b.strip():
        return 1.0
    return max(-1.0, min(1.0, float(_embedder().similarity(a, b))))


@functools.cache
def _embedder() -> Any:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        import wordllama
    except ImportError:
        raise ComparisonError("semantic similarity needs the semantic extra: pip install "
                              "'shadowstream[semantic]'") from None
    finally:
        # It configures logging on import (everything at INFO): not its decision to make.
        root.handlers[:] = handlers
        root.setLevel(level)
    # The weights and the tokenizer come in the wheel: load them from there, never download.
    return wordllama.WordLlama.load(cache_dir=Path(wordllama.__file__).parent,
                                    disable_download=True)


def text_ops(live: str, candidate: str) -> list[tuple[str, str, str]]:
    """A word-level diff for side-by-side display: (tag, live words, candidate words), tag
    one of "equal", "replace", "delete", "insert". On the original whitespace-split words, not
    the normalised ones, so the display shows the real text."""
    wa, wb = live.split(), candidate.split()
    return [(op.tag, " ".join(wa[op.src_start:op.src_end]),
             " ".join(wb[op.dest_start:op.dest_end]))
            for op in Levenshtein.opcodes(wa, wb)]


# -- json ---------------------------------------------------------------------------------

FIELD_METRICS_MAX = 64
"""At most this many ``field:<path>`` metrics per pair (the first in sorted order)."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A JSON-quoted key kept whole, or an index: so a key like "a[1]" is not taken for one.
_QUOTED_OR_INDEX = re.compile(r'("(?:[^"\\]|\\.)*")|\[\d+\]')
_SPLIT_STAR = re.compile(r'("(?:[^"\\]|\\.)*"|\[\*\])')
_ABSENT: Any = object()


@dataclass(frozen=True)
class FieldDiff:
    """One leaf of a JSON diff; ``live``/``candidate`` are None on the side it is absent."""

    path: str
    status: Literal["equal", "different", "missing", "extra"]
    live: Any
    candidate: Any


def json_leaves(doc: Any) -> int:
    """How many leaves (scalars, empty objects and arrays) a JSON document has."""
    count, stack = 0, [doc]
    while stack:  # a loop, not recursion: documents may nest deeply
        v = stack.pop()
        if isinstance(v, dict) and v:
            stack.extend(v.values())
        elif isinstance(v, list) and v:
            stack.extend(v)
        else:
            count += 1
    return count


def json_diff(live: Any, candidate: Any, tol: Tolerance = Tolerance()) -> list[FieldDiff]:
    """Leaf-by-leaf diff of two JSON values by path, in sorted path order, ignored paths left
    out; ComparisonError for a value that is not JSON or a number that is not finite."""
    _check_json(live, "live")
    _check_json(candidate, "candidate")
    ignore, sets = _matcher(tuple(tol.ignore)), _matcher(tuple(tol.sets))
    out: list[FieldDiff] = []
    # Iterative: a deeply nested document must not hit the recursion limit.
    stack: list[tuple[str, Any, Any]] = [("$", live, candidate)]
    while stack:
        path, a, b = stack.pop()
        if ignore(path):
            continue
        is_set = sets(path)
        if a is _ABSENT or b is _ABSENT:
            extra = a is _ABSENT
            v = b if extra else a
            if isinstance(v, dict) and v:
                stack.extend((_key(path, k), *_one_side(extra, x, _ABSENT))
                             for k, x in v.items())
            elif isinstance(v, list) and v and not is_set:
                stack.extend((f"{path}[{i}]", *_one_side(extra, x, _ABSENT))
                             for i, x in enumerate(v))
            else:
                out.append(FieldDiff(path, "extra" if extra else "missing",
                                     *_one_side(extra, v, None)))
        elif is_set and isinstance(a, list) and isinstance(b, list):
            same = Counter(map(_canonical, a)) == Counter(map(_canonical, b))
            out.append(FieldDiff(path, "equal" if same else "different", a, b))
        elif isinstance(a, dict) and isinstance(b, dict) and (a or b):
            stack.extend((_key(path, k), a.get(k, _ABSENT), b.get(k, _ABSENT))
                         for k in {**a, **b})
        elif isinstance(a, list) and isinstance(b, list) and (a or b):
            stack.extend((f"{path}[{i}]", a[i] if i < len(a) else _ABSENT,
                          b[i] if i < len(b) else _ABSENT) for i in range(max(len(a), len(b))))
        else:  # scalars, both empty, or a type change: one entry holding both subtrees
            out.append(FieldDiff(path, "equal" if _leaf_equal(a, b, tol) else "different",
                                 a, b))
    out.sort(key=lambda d: d.path)
    return out


def _one_side(extra: bool, v: Any, absent: Any) -> tuple[Any, Any]:
    """(live, candidate) for a value on the candidate side only (extra) or the live side."""
    return (absent, v) if extra else (v, absent)


def _key(path: str, key: str) -> str:
    if _IDENTIFIER.fullmatch(key):
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def _jtype(v: Any) -> str:
    # bool before number: True is an int to Python, not a number to JSON.
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    return type(v).__name__


def _leaf_equal(a: Any, b: Any, tol: Tolerance) -> bool:
    ta = _jtype(a)
    if ta != _jtype(b):
        return False
    if ta != "number" or a == b:
        return bool(a == b)
    try:
        return abs(b - a) <= tol.atol + tol.rtol * abs(a)
    except OverflowError:  # an integer beyond float range, and not equal
        return False


def _canonical(v: Any) -> bytes:
    try:
        return orjson.dumps(v, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # orjson refuses integers beyond 64 bits; the standard module does not
        return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _check_json(value: Any, side: str) -> None:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            if not all(isinstance(k, str) for k in v):
                raise ComparisonError(f"{side} json value has a key that is not a string")
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, float) and not math.isfinite(v):
            raise ComparisonError(f"non-finite number in the {side} json value")
        elif v is not None and not isinstance(v, str | int | float):
            raise ComparisonError(f"{side} json value holds a {type(v).__name__}")


@functools.lru_cache(maxsize=256)
def _matcher(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    """A predicate: does a path match one of the patterns exactly (``[*]`` any index)."""
    if not patterns:
        return lambda path: False
    parts = ("".join(r"\[\d+\]" if piece == "[*]" else re.escape(piece)
                     for piece in _SPLIT_STAR.split(p)) for p in patterns)
    regex = re.compile("|".join(f"(?:{p})" for p in parts))
    return lambda path: regex.fullmatch(path) is not None


def _field(path: str) -> str:
    """The path with its array indices collapsed to ``[*]``: one name per field."""
    return _QUOTED_OR_INDEX.sub(lambda m: m.group(1) or "[*]", path)


def _json(a: Any, b: Any, tol: Tolerance, *_: Any) -> Comparison:
    diffs = json_diff(a, b, tol)
    counts = Counter(d.status for d in diffs)
    n = len(diffs)
    off = n - counts["equal"]
    rate = off / n if n else 0.0
    metrics = {"fields_compared": float(n), "fields_different": float(counts["different"]),
               "fields_missing": float(counts["missing"]),
               "fields_extra": float(counts["extra"]), "field_difference_rate": rate}
    per_field: dict[str, float] = {}
    for d in diffs:
        name = _field(d.path)
        per_field[name] = max(per_field.get(name, 0.0), float(d.status != "equal"))
    for name in sorted(per_field)[:FIELD_METRICS_MAX]:
        metrics[f"field:{name}"] = per_field[name]
    disagree = rate > tol.max_field_difference if tol.max_field_difference is not None \
        else off > 0
    return Comparison("json", rate, disagree, metrics)


_COMPARATORS = {"scalar": _regression("scalar"), "vector": _regression("vector"),
                "probs": _probs, "scores": _scores, "embedding": _embedding,
                "text": _text, "json": _json}
