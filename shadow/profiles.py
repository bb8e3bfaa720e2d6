"""``shadow profile build``: a drift reference from a time range of the requests topic."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from consumers.drift import Profile
from consumers.windows import request_features
from schemas import ContractError, MirroredRequest, decode
from shadow.exceptions import EmptyRangeError, ShadowstreamError
from shadow.recording import Position, read_range
from shadow.settings import Settings

__all__ = ["ProfileSet", "build_profiles"]


@dataclass
class ProfileSet:
    start_ms: int
    end_ms: int
    requests: int = 0
    skipped: int = 0
    profiles: dict[str, Profile] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"from": self.start_ms, "to": self.end_ms, "requests": self.requests,
                "models": {m: p.to_dict() for m, p in sorted(self.profiles.items())}}


def build_profiles(settings: Settings, bootstrap: str, start_ms: int, end_ms: int, *,
                   bins: int = 100, progress: Callable[[int], None] | None = None,
                   timeout_s: float = 30.0) -> ProfileSet:
    """Read the requests with start <= timestamp < end from every partition; profile each
    model."""
    topic = settings.topic("requests")
    result = ProfileSet(start_ms, end_ms)
    rows: dict[str, list[dict[str, float | str]]] = defaultdict(list)
    try:
        messages = read_range(settings, bootstrap, topic, Position("time", start_ms),
                              Position("time", end_ms), timeout_s=timeout_s)
    except EmptyRangeError:
        messages = iter(())  # said below, as "no requests"
    for m in messages:
        try:
            r = decode(m.value, MirroredRequest)
        except ContractError:
            result.skipped += 1
            continue
        output = r.live.output.model_dump(exclude_none=True) if r.live.output else None
        rows[r.model].append(request_features(r.inputs, output))
        result.requests += 1
        if progress and result.requests % 1000 == 0:
            progress(result.requests)
    if not rows:
        raise ShadowstreamError(f"no requests in {topic} between {start_ms} and {end_ms}")
    result.profiles = {m: Profile.build(r, bins=bins, source=f"{topic} [{start_ms}, {end_ms})")
                       for m, r in rows.items()}
    return result
