"""The one place that turns records into bytes and back (orjson, fixed options)."""

from __future__ import annotations

import math
from typing import Any, TypeVar

import orjson
from pydantic import ValidationError

from schemas.exceptions import ContractError
from schemas.records import (
    OUTPUT_KINDS,
    RECORD_TYPES,
    EventBatch,
    MirroredRequest,
    ShadowOutput,
    _Record,
)

R = TypeVar("R", bound=_Record)

_BY_SCHEMA: dict[str, type[_Record]] = {t.SCHEMA: t for t in RECORD_TYPES}


def dumps(obj: Any) -> bytes:
    """Serialize plain data: the options every JSON payload of the project uses."""
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ContractError(f"malformed JSON: {exc}", stage="decode") from None


def encode(record: _Record) -> bytes:
    """Encode a record as compact JSON, without the fields that are unset (None)."""
    return orjson.dumps(record.model_dump(by_alias=True, exclude_none=True))


def decode(data: bytes | bytearray | memoryview | str, record_type: type[R]) -> R:
    """Decode and validate one event of a known type, or raise ContractError with the path."""
    try:
        # pydantic-core parses and validates in one pass: half the time of loads + validate.
        record = record_type.model_validate_json(data)
        if "schema_" in record.model_fields_set:  # the field has a default; the wire needs it
            return record
    except ValidationError:
        pass  # the slower path below says precisely what is wrong
    return _validate(loads(data), record_type)


def decode_event(data: bytes | bytearray | memoryview | str) -> _Record:
    """Decode an event of any known type, chosen by its ``schema`` field."""
    doc = loads(data)
    record_type = _BY_SCHEMA.get(doc.get("schema")) if isinstance(doc, dict) else None
    if record_type is None:
        _check_schema_field(doc, None)
        raise AssertionError("unreachable")  # pragma: no cover
    return _validate(doc, record_type)


def from_dict(doc: Any, record_type: type[R]) -> R:
    """Validate an already-parsed document."""
    return _validate(doc, record_type)


def _validate(doc: Any, record_type: type[R]) -> R:
    _check_schema_field(doc, record_type)
    try:
        return record_type.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        reason = "missing required field" if err["type"] == "missing" else err["msg"]
        raise ContractError(reason, path=_path(err["loc"]), schema=record_type.SCHEMA) from None


def _check_schema_field(doc: Any, record_type: type[_Record] | None) -> None:
    expected = record_type.SCHEMA if record_type else None
    if not isinstance(doc, dict):
        raise ContractError(f"expected a JSON object, got {type(doc).__name__}", schema=expected)
    schema = doc.get("schema")
    if schema is None:
        raise ContractError("missing required field", path="schema", schema=expected)
    if not isinstance(schema, str):
        raise ContractError("must be a string like 'mirror.request/1'", path="schema")
    if expected is not None and schema == expected:
        return
    name = schema.partition("/")[0]
    known = [s for s in _BY_SCHEMA if s.partition("/")[0] == name]
    if known and (expected is None or expected.partition("/")[0] == name):
        raise ContractError(f"unknown schema version {schema!r} (known: {', '.join(known)})",
                            path="schema", schema=expected)
    if expected is None:
        raise ContractError(f"unknown schema {schema!r}", path="schema")
    raise ContractError(f"expected {expected!r}, got {schema!r}", path="schema", schema=expected)


def _path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for i, item in enumerate(loc):
        # Tagged unions add the tag to the location ("output.scalar.value"): drop it.
        if isinstance(item, str) and item in OUTPUT_KINDS and i > 0 and loc[i - 1] == "output":
            continue
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts)


# -- records that carry one event or a batch ------------------------------------------------

BATCH = EventBatch.SCHEMA
MAX_BATCH = 100_000


def events_of(data: bytes | bytearray | memoryview | str) -> tuple[list[Any], bool]:
    """The events one Kafka record carries, not yet validated: ``([event], False)`` for a
    record of one event, ``(events, True)`` for a batch (``batch/1``). ContractError when
    the record is not JSON, or is a batch without a list of events."""
    doc = loads(data)
    if type(doc) is dict and doc.get("schema") == BATCH:
        events = doc.get("events")
        if type(events) is not list or not events:
            raise ContractError("a batch needs a non-empty list of events", path="events",
                                schema=BATCH)
        if len(events) > MAX_BATCH:
            raise ContractError(f"a batch holds at most {MAX_BATCH} events, this one "
                                f"{len(events)}", path="events", schema=BATCH)
        return events, True
    return [doc], False


def encode_batch(events: list[dict[str, Any]]) -> bytes:
    """One record for several events of one partition (documents, already valid)."""
    return orjson.dumps({"schema": BATCH, "events": events})


_BATCH_OPEN = b'{"schema":"' + BATCH.encode() + b'","events":['


def join_batch(encoded: list[bytes]) -> bytes:
    """``encode_batch`` of events already encoded (each one JSON object): no second pass."""
    return _BATCH_OPEN + b",".join(encoded) + b"]}"


_NUMBER = (int, float)


def as_request(doc: Any) -> dict[str, Any]:
    """A mirrored request as a plain, valid document. The common shape is checked here in a
    few microseconds; anything else goes through the typed record, which says precisely what
    is wrong (ContractError) or returns what it accepts, normalised (``"ts": 1.0`` -> 1)."""
    if (type(doc) is dict and doc.get("schema") == MirroredRequest.SCHEMA
            and _name(doc.get("request_id")) and _name(doc.get("model"))
            and _epoch(doc.get("ts")) and type(doc.get("inputs")) is dict
            and _live(doc.get("live")) and _attrs(doc.get("attrs"))):
        return doc
    return _validate(doc, MirroredRequest).model_dump(by_alias=True, exclude_none=True)


def as_output(doc: Any) -> dict[str, Any]:
    """A shadow output as a plain, valid document (as ``as_request``)."""
    if (type(doc) is dict and doc.get("schema") == ShadowOutput.SCHEMA
            and _name(doc.get("request_id")) and _name(doc.get("model"))
            and _epoch(doc.get("ts")) and _name(doc.get("candidate"))
            and _millis(doc.get("latency_ms")) and _answer(doc.get("output"))
            and _optional_str(doc.get("error")) and _optional_bool(doc.get("control"))):
        return doc
    return _validate(doc, ShadowOutput).model_dump(by_alias=True, exclude_none=True)


# The fast checks accept only what the typed records accept (a property test holds them to
# it); where they are unsure they say no, and the typed record decides.

def _name(v: Any) -> bool:
    return type(v) is str and 0 < len(v) <= 256


def _epoch(v: Any) -> bool:
    return type(v) is int and v >= 0


def _millis(v: Any) -> bool:
    return type(v) in _NUMBER and 0 <= v < math.inf


def _optional_bool(v: Any) -> bool:
    return v is None or type(v) is bool


def _optional_str(v: Any) -> bool:
    return v is None or type(v) is str


def _numbers(v: Any) -> bool:
    if type(v) is not list or not v:
        return False
    for x in v:  # a loop, not all(genexpr): this runs for every answer of every event
        t = type(x)
        if (t is not float and t is not int) or not -math.inf < x < math.inf:
            return False
    return True


def _strings(v: Any) -> bool:
    return v is None or (type(v) is list and all(type(x) is str for x in v))


def _answer(o: Any) -> bool:
    if o is None:
        return True
    if type(o) is not dict:
        return False
    kind, value = o.get("kind"), o.get("value")
    if type(kind) is not str or kind not in OUTPUT_KINDS:
        return False
    if kind == "scalar":
        return type(value) in _NUMBER and -math.inf < value < math.inf
    if kind == "text":
        return type(value) is str and len(value) <= 1_000_000
    if kind == "json":
        # Nested values are JSON already (orjson decoded them); the typed record says no more.
        return type(value) is dict or type(value) is list
    return _numbers(value) and _strings(o.get("labels")) and _strings(o.get("items"))


def _live(v: Any) -> bool:
    return (type(v) is dict and _name(v.get("version")) and _millis(v.get("latency_ms"))
            and _answer(v.get("output")) and _optional_str(v.get("error")))


def _attrs(v: Any) -> bool:
    if v is None:
        return True
    if type(v) is not dict:
        return False
    segment, tenant, trace = v.get("segment"), v.get("tenant"), v.get("trace_id")
    return ((segment is None or type(segment) is str) and (tenant is None or type(tenant) is str)
            and (trace is None or type(trace) is str))
