"""``shadow profile build``: a drift reference from a time range of the requests topic."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from consumers.drift import Profile
from consumers.windows import request_features
from schemas import ConfigError, ContractError
from schemas.codec import as_request, events_of
from shadow.exceptions import EmptyRangeError
from shadow.offline.recording import Position, read_range
from shadow.settings import Settings

__all__ = ["ProfileSet", "build_profiles", "load_profiles"]


@dataclass
class ProfileSet:
    start: Position
    end: Position
    requests: int = 0
    skipped: int = 0
    profiles: dict[str, Profile] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"from": str(self.start), "to": str(self.end), "requests": self.requests,
                "models": {m: p.to_dict() for m, p in sorted(self.profiles.items())}}


def build_profiles(settings: Settings, bootstrap: str, start: Position, end: Position, *,
                   bins: int = 100, progress: Callable[[int], None] | None = None
                   ) -> ProfileSet:
    """Read the requests of [start, end) of every partition (the positions of ``shadow
    record``); profile each model."""
    topic = settings.topic("requests")
    result = ProfileSet(start, end)
    rows: dict[str, list[dict[str, float | str]]] = defaultdict(list)
    for m in read_range(settings, bootstrap, topic, start, end):
        try:
            events, _ = events_of(m.value)
        except ContractError:
            result.skipped += 1
            continue
        for doc in events:
            try:
                r = as_request(doc)
            except ContractError:
                result.skipped += 1
                continue
            rows[r["model"]].append(request_features(r["inputs"], r["live"].get("output")))
            result.requests += 1
            if progress and result.requests % 1000 == 0:
                progress(result.requests)
    if not rows:
        raise EmptyRangeError(f"no decodable requests in {topic} from {start} to {end} "
                              f"({result.skipped} undecodable)")
    result.profiles = {m: Profile.build(r, bins=bins, source=f"{topic} from {start} to {end}")
                       for m, r in rows.items()}
    return result


def load_profiles(path: Path) -> dict[str, Profile]:
    """The per-model profiles of a file written by ``build_profiles`` (``ProfileSet``)."""
    try:
        doc = orjson.loads(path.read_bytes())
        return {model: Profile.from_dict(p) for model, p in doc["models"].items()}
    except OSError as exc:
        raise ConfigError(str(path), exc.strerror or str(exc)) from None
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ConfigError(str(path), f"not a profile of `shadow profile build` ({exc})"
                          ) from None
