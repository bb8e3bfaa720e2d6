"""Documents the pipeline writes, built in one place so every writer writes the same bytes."""

from __future__ import annotations

from typing import Any

from schemas.records import ShadowOutput

__all__ = ["shadow_output"]


def shadow_output(request_id: str, model: str, ts: int, candidate: str, output: Any,
                  latency_ms: float, error: str | None = None) -> dict[str, Any]:
    """A ``shadow.output/1`` document: a candidate's answer (or error) to one request."""
    doc: dict[str, Any] = {"schema": ShadowOutput.SCHEMA, "request_id": request_id,
                           "model": model, "ts": ts, "candidate": candidate,
                           "latency_ms": latency_ms}
    if output is not None:
        doc["output"] = output
    if error is not None:
        doc["error"] = error
    return doc
