"""The closed windows on a windows topic, as ``shadow verdict --live`` judges them."""

from __future__ import annotations

from typing import Any

import orjson

from shadow.offline.recording import Position, read_range
from shadow.settings import Settings

__all__ = ["read_windows"]


def read_windows(settings: Settings, bootstrap: str) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The closed windows on ``<prefix>.windows`` of each model and candidate (overall, not
    per segment), oldest first; a window emitted twice (after a restart: the same numbers)
    counts once. What ``shadow verdict --live`` judges."""
    latest: dict[tuple[str, str, int], dict[str, Any]] = {}
    topic = settings.topic("windows")
    for m in read_range(settings, bootstrap, topic, Position("beginning"), Position("end")):
        try:
            w = orjson.loads(m.value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(w, dict) and w.get("segment") is None and "window_start" in w:
            latest[(w["model"], w["candidate"], w["window_start"])] = w
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for (model, cand, _), w in sorted(latest.items()):
        groups.setdefault((model, cand), []).append(w)
    return groups
