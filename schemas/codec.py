"""The one place that turns records into bytes and back (orjson, fixed options)."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import ValidationError

from schemas.exceptions import ContractError
from schemas.records import RECORD_TYPES, _Record

R = TypeVar("R", bound=_Record)

_BY_SCHEMA: dict[str, type[_Record]] = {t.SCHEMA: t for t in RECORD_TYPES}
_OUTPUT_KINDS = frozenset({"scalar", "vector", "probs", "scores", "embedding"})


def dumps(obj: Any) -> bytes:
    """Serialize plain data: the options every JSON payload of the project uses."""
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ContractError(f"malformed JSON: {exc}") from None


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
        if isinstance(item, str) and item in _OUTPUT_KINDS and i > 0 and loc[i - 1] == "output":
            continue
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts)
