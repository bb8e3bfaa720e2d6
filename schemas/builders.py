"""Documents the pipeline writes, built in one place so every writer writes the same bytes."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from schemas.records import DeadLetter, ShadowOutput

__all__ = ["dead_letter", "shadow_output"]

_MAX_TEXT = 256  # a reason, request id or model name longer than this is cut


def shadow_output(request_id: str, model: str, ts: int, candidate: str, output: Any,
                  latency_ms: float, error: str | None = None, control: bool = False
                  ) -> dict[str, Any]:
    """A ``shadow.output/1`` document: a candidate's answer (or error) to one request;
    ``control`` for a control's (a second copy of the live model)."""
    doc: dict[str, Any] = {"schema": ShadowOutput.SCHEMA, "request_id": request_id,
                           "model": model, "ts": ts, "candidate": candidate,
                           "latency_ms": latency_ms}
    if output is not None:
        doc["output"] = output
    if error is not None:
        doc["error"] = error
    if control:
        doc["control"] = True
    return doc


def dead_letter(stage: str, reason: str, *, ts: int, source: Sequence[Any] | None = None,
                key: bytes | None = None, value: bytes | None = None,
                request_id: str | None = None, model: str | None = None,
                detail: str = "") -> dict[str, Any]:
    """A ``deadletter/1`` document: what could not be processed (its original ``key`` and
    ``value`` bytes), at which ``stage`` and why. ``source`` is ``(topic, partition,
    offset)``, with the event's index in a batch record as a fourth item. The request id is
    the record key's when not given (records are keyed by request id)."""
    doc: dict[str, Any] = {"schema": DeadLetter.SCHEMA, "ts": ts, "stage": stage,
                           "reason": reason[:_MAX_TEXT] or "invalid", "detail": detail}
    if source is not None:
        doc["source"] = {"topic": source[0], "partition": source[1], "offset": source[2]}
        if len(source) > 3:
            doc["source"]["index"] = source[3]
    if request_id is None and key is not None:
        request_id = key.decode("utf-8", "replace")
    if request_id:
        doc["request_id"] = request_id[:_MAX_TEXT]
    if model:
        doc["model"] = model[:_MAX_TEXT]
    if key is not None:
        doc["key_b64"] = base64.b64encode(key).decode()
    if value is not None:
        doc["value_b64"] = base64.b64encode(value).decode()
    return doc
