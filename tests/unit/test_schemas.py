"""The codec and the JSON Schema files: round trips, each output kind, and rejections."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

import schemas
from schemas import ContractError, MirroredRequest, decode, decode_event, encode
from schemas.records import RECORD_TYPES

SCHEMA_DIR = Path(schemas.__file__).parent / "json"
FILES = {t.SCHEMA: SCHEMA_DIR / f"{t.SCHEMA.partition('/')[0]}.schema.json" for t in RECORD_TYPES}


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


REGISTRY = Registry().with_resources(
    (doc["$id"], Resource.from_contents(doc))
    for doc in (_load(p) for p in SCHEMA_DIR.glob("*.schema.json"))
)


def _validator(schema_name: str) -> Draft202012Validator:
    return Draft202012Validator(_load(FILES[schema_name]), registry=REGISTRY)


def _example(schema_name: str) -> dict[str, Any]:
    return copy.deepcopy(_load(FILES[schema_name])["examples"][0])


@pytest.mark.parametrize("path", sorted(SCHEMA_DIR.glob("*.schema.json")), ids=lambda p: p.name)
def test_schema_files_are_valid_2020_12(path: Path) -> None:
    doc = _load(path)
    Draft202012Validator.check_schema(doc)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize("record_type", RECORD_TYPES, ids=lambda t: t.SCHEMA)
def test_example_round_trips_and_satisfies_both_contracts(record_type: type) -> None:
    example = _example(record_type.SCHEMA)
    _validator(record_type.SCHEMA).validate(example)
    record = decode(json.dumps(example).encode(), record_type)
    encoded = encode(record)
    assert decode(encoded, record_type) == record
    assert json.loads(encoded) == example  # the example is canonical: nothing added or lost
    assert decode_event(encoded) == record


def _required(schema_name: str) -> list[str]:
    return _load(FILES[schema_name])["required"]


@pytest.mark.parametrize(
    ("schema_name", "field"),
    [(t.SCHEMA, f) for t in RECORD_TYPES for f in _required(t.SCHEMA)],
)
def test_each_required_field_is_rejected_when_missing(schema_name: str, field: str) -> None:
    doc = _example(schema_name)
    del doc[field]
    assert not _validator(schema_name).is_valid(doc)
    record_type = next(t for t in RECORD_TYPES if schema_name == t.SCHEMA)
    with pytest.raises(ContractError) as info:
        decode(json.dumps(doc).encode(), record_type)
    assert info.value.path == field
    assert "missing" in info.value.reason.lower()


OUTPUTS = {
    "scalar": {"kind": "scalar", "value": 0.25},
    "vector": {"kind": "vector", "value": [1.0, -2.5, 3.0]},
    "probs": {"kind": "probs", "value": [0.7, 0.2, 0.1], "labels": ["a", "b", "c"]},
    "scores": {"kind": "scores", "value": [3.1, 2.2, 0.4], "items": ["x", "y", "z"]},
    "embedding": {"kind": "embedding", "value": [0.1, 0.2, 0.3, 0.4]},
    "text": {"kind": "text", "value": "The parcel ships on Monday."},
    "json": {"kind": "json", "value": {"status": "ok", "items": [{"sku": "a1", "qty": 2}],
                                       "note": None}},
}


@pytest.mark.parametrize("kind", sorted(OUTPUTS))
def test_each_output_kind_round_trips(kind: str) -> None:
    doc = _example("mirror.request/1")
    doc["live"]["output"] = OUTPUTS[kind]
    _validator("mirror.request/1").validate(doc)
    req = decode(json.dumps(doc).encode(), MirroredRequest)
    assert req.live.output is not None and req.live.output.kind == kind
    assert json.loads(encode(req))["live"]["output"] == OUTPUTS[kind]


BAD = [
    ("live.latency_ms", lambda d: d["live"].update(latency_ms="slow"), "number"),
    ("live.latency_ms", lambda d: d["live"].update(latency_ms=-1), "greater than or equal"),
    ("live.output.value", lambda d: d["live"].update(output={"kind": "scalar", "value": [1]}),
     "number"),
    ("live.output.value", lambda d: d["live"].update(output={"kind": "vector", "value": []}),
     "at least 1"),
    ("live.output.value[1]",
     lambda d: d["live"].update(output={"kind": "probs", "value": [0.5, "x"]}), "number"),
    ("live.output", lambda d: d["live"].update(output={"kind": "image", "value": 1}), "tag"),
    ("live.output.value", lambda d: d["live"].update(output={"kind": "text", "value": 3}),
     "string"),
    ("live.output.value", lambda d: d["live"].update(output={"kind": "json", "value": "ok"}),
     "object or array"),
    ("ts", lambda d: d.update(ts="yesterday"), "integer"),
    ("request_id", lambda d: d.update(request_id=""), "at least 1"),
    ("inputs", lambda d: d.update(inputs=[1, 2]), "dictionary"),
]


@pytest.mark.parametrize(("path", "mutate", "words"), BAD, ids=[b[0] + ":" + b[2] for b in BAD])
def test_rejection_names_the_field_path_and_reason(path: str, mutate, words: str) -> None:
    doc = _example("mirror.request/1")
    mutate(doc)
    assert not _validator("mirror.request/1").is_valid(doc)
    with pytest.raises(ContractError) as info:
        decode(json.dumps(doc).encode(), MirroredRequest)
    assert info.value.path == path
    assert words in info.value.reason
    assert info.value.schema == "mirror.request/1"
    assert path in str(info.value)


def test_unknown_schema_version_is_named() -> None:
    doc = _example("mirror.request/1")
    doc["schema"] = "mirror.request/9"
    with pytest.raises(ContractError, match=r"unknown schema version 'mirror\.request/9'"):
        decode(json.dumps(doc).encode(), MirroredRequest)
    with pytest.raises(ContractError, match="unknown schema version"):
        decode_event(json.dumps(doc).encode())


def test_wrong_record_type_is_refused() -> None:
    doc = _example("shadow.output/1")
    with pytest.raises(ContractError, match=r"expected 'mirror\.request/1'"):
        decode(json.dumps(doc).encode(), MirroredRequest)


@pytest.mark.parametrize("data", [b"", b"{", b"\xff\xfe", b"[1,2]", b"42", b'{"schema": 5}'])
def test_garbage_is_a_contract_error(data: bytes) -> None:
    with pytest.raises(ContractError):
        decode(data, MirroredRequest)
    with pytest.raises(ContractError):
        decode_event(data)


def test_non_finite_numbers_are_refused() -> None:
    doc = _example("shadow.output/1")
    doc["output"] = {"kind": "scalar", "value": float("inf")}
    with pytest.raises(ContractError) as info:
        schemas.codec.from_dict(doc, schemas.ShadowOutput)
    assert info.value.path == "output.value"


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    doc = _example("mirror.request/1")
    doc["added_in_a_later_minor"] = {"x": 1}
    req = decode(json.dumps(doc).encode(), MirroredRequest)
    assert "added_in_a_later_minor" not in json.loads(encode(req))


# -- records of one event or a batch, and the fast checks ------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from schemas.codec import as_output, as_request, encode_batch, events_of  # noqa: E402
from schemas.records import ShadowOutput  # noqa: E402


def test_a_record_carries_one_event_or_a_batch() -> None:
    one = _example("mirror.request/1")
    assert events_of(json.dumps(one).encode()) == ([one], False)
    batch = _example("batch/1")
    events, batched = events_of(encode_batch(batch["events"]))
    assert batched and events == batch["events"]
    for bad, message in ((b'{"schema": "batch/1"}', "non-empty list of events"),
                         (b'{"schema": "batch/1", "events": []}', "non-empty list"),
                         (b"[1, 2", "malformed JSON")):
        with pytest.raises(ContractError, match=message):
            events_of(bad)


_ANY = st.one_of(st.none(), st.booleans(), st.integers(-5, 2**40), st.floats(allow_nan=True),
                 st.text(max_size=3), st.lists(st.integers(0, 3), max_size=2),
                 st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))


def _answers() -> st.SearchStrategy:
    numbers = st.lists(st.one_of(st.floats(-1e6, 1e6), st.integers(-9, 9)), min_size=1,
                       max_size=3)
    return st.one_of(
        st.none(),
        st.fixed_dictionaries({"kind": st.just("scalar"),
                               "value": st.one_of(st.floats(0, 1), st.integers(0, 3))}),
        st.fixed_dictionaries({"kind": st.sampled_from(["probs", "vector", "scores",
                                                       "embedding"]), "value": numbers},
                              optional={"labels": st.lists(st.text(max_size=3)),
                                        "items": st.lists(st.text(max_size=3))}),
        st.fixed_dictionaries({"kind": st.just("text"), "value": st.text(max_size=5)}),
        st.fixed_dictionaries({"kind": st.just("json"), "value": st.one_of(
            st.dictionaries(st.text(max_size=2), st.one_of(st.none(), st.integers(), st.text(
                max_size=2)), max_size=3), st.lists(st.integers(), max_size=3))}))


def _valid_request() -> st.SearchStrategy:
    live = st.fixed_dictionaries({"version": st.text(min_size=1, max_size=4),
                                  "latency_ms": st.one_of(st.floats(0, 1e4), st.integers(0, 9)),
                                  "output": _answers()},
                                 optional={"error": st.text(max_size=3)})
    return st.fixed_dictionaries(
        {"schema": st.just("mirror.request/1"), "request_id": st.text(min_size=1, max_size=256),
         "model": st.text(min_size=1, max_size=5), "ts": st.integers(0, 2**45),
         "inputs": st.dictionaries(st.text(max_size=3), st.integers(), max_size=3),
         "live": live},
        optional={"attrs": st.fixed_dictionaries({}, optional={
            "segment": st.text(max_size=3), "tenant": st.one_of(st.none(), st.text())})})


def _valid_output() -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {"schema": st.just("shadow.output/1"), "request_id": st.text(min_size=1, max_size=256),
         "model": st.text(min_size=1, max_size=5), "ts": st.integers(0, 2**45),
         "candidate": st.text(min_size=1, max_size=256),
         "latency_ms": st.one_of(st.floats(0, 1e4), st.integers(0, 9))},
        optional={"output": _answers(), "error": st.text(max_size=3),
                  "control": st.booleans()})


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def _mutated(draw: Any, valid: st.SearchStrategy) -> Any:
    """A valid document, or one with one value (anywhere) replaced by anything, or one key
    removed: near misses, where a fast check could let through what the record refuses."""
    doc = copy.deepcopy(draw(valid))
    how = draw(st.sampled_from(["keep", "replace", "replace", "drop"]))
    paths = _paths(doc)
    if how == "keep" or not paths:
        return doc
    path = draw(st.sampled_from(paths))
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    if how == "drop" and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(_ANY)
    return doc


def _typed(doc: Any, record_type: type) -> Any:
    try:
        return schemas.codec._validate(doc, record_type)
    except ContractError:
        return None


@settings(max_examples=600, deadline=None)
@given(_mutated(_valid_request()))
def test_the_fast_request_check_accepts_exactly_what_the_record_accepts(doc: dict) -> None:
    typed = _typed(doc, MirroredRequest)
    try:
        fast = as_request(doc)
    except ContractError:
        fast = None
    assert (typed is None) == (fast is None), doc
    if typed is not None:
        assert MirroredRequest.model_validate(fast) == typed


@settings(max_examples=600, deadline=None)
@given(_mutated(_valid_output()))
def test_the_fast_output_check_accepts_exactly_what_the_record_accepts(doc: dict) -> None:
    typed = _typed(doc, ShadowOutput)
    try:
        fast = as_output(doc)
    except ContractError:
        fast = None
    assert (typed is None) == (fast is None), doc
    if typed is not None:
        assert ShadowOutput.model_validate(fast) == typed


def test_contract_errors_say_whether_the_bytes_decoded() -> None:
    with pytest.raises(ContractError) as broken:
        decode_event(b'{"schema": ')
    assert broken.value.stage == "decode"
    with pytest.raises(ContractError) as invalid:
        decode_event(b'{"schema": "mirror.request/1"}')
    assert invalid.value.stage == "validate"


def test_dead_letters_are_built_one_way_and_satisfy_their_contract() -> None:
    from schemas.builders import dead_letter

    long = "r" * 300
    doc = dead_letter("validate", "", ts=5, source=("t", 1, 7, 3), key=long.encode(),
                      value=b"\x00raw", model="m" * 300, detail="inputs")
    _validator("deadletter/1").validate(doc)
    decode(json.dumps(doc).encode(), schemas.DeadLetter)  # the typed record agrees
    assert doc["reason"] == "invalid" and doc["source"]["index"] == 3
    assert doc["request_id"] == long[:256] and len(doc["model"]) == 256  # cut, not refused
    # No key: no request id unless given; no index for a record of one event.
    bare = dead_letter("join", "late", ts=1, source=("t", 0, 2), request_id="r1")
    _validator("deadletter/1").validate(bare)
    assert bare["request_id"] == "r1" and "index" not in bare["source"]
    assert "key_b64" not in bare and "value_b64" not in bare
