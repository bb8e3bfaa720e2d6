"""A synthetic production service: a small real torch model answering requests, mirrored.

``shadow traffic`` runs it. Everything that matters to tests is decided by the seed and the
request's index, not by timing: the inputs, which requests get a wrong live answer
(``disagree``), and, given the index of the first shifted request, the drift.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

COUNTRIES = ("DE", "FR", "US")
SEGMENTS = ("eu", "us")
N_FEATURES = 8


class Publisher(Protocol):
    def publish(self, request_id: str, inputs: dict[str, Any], output: Any = None, *,
                latency_ms: float = 0.0, error: str | None = None, ts: int | None = None,
                segment: str | None = None, **kw: Any) -> bool: ...


class FraudModel(nn.Module):
    """A two-class MLP over eight features; small enough for a millisecond per batch on CPU."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=-1)


def build_model(seed: int = 0) -> FraudModel:
    """The live model (also loadable by the worker as ``shadow.sim.traffic:build_model``)."""
    gen = torch.Generator().manual_seed(seed)
    model = FraudModel()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.eval()


def build_retrained() -> FraudModel:
    """A candidate for trying replay and verdicts: the live model's shape with other weights
    (as a retraining gives), so it disagrees with the live answers on many requests."""
    return build_model(1)


# The model's declared interface (shadow.runtime.models.ModelCard): the worker builds the very same
# features from an event's inputs. Loadable as `--candidate shadow.sim.traffic:build_model`.
MODEL_CARD: dict[str, Any] = {
    "features": [
        {"field": "amount", "transform": "log1p", "scale": 0.2},
        {"field": "hour", "scale": 1 / 23},
        {"field": "country", "one_hot": list(COUNTRIES)},
        {"field": "history", "size": 3},
    ],
    "output": "probs",
}


def featurize(inputs: dict[str, Any]) -> list[float]:
    """Inputs -> the model's eight features (MODEL_CARD says the same to the worker)."""
    country = inputs["country"]
    return [
        math.log1p(inputs["amount"]) * 0.2,
        inputs["hour"] * (1 / 23),
        *(1.0 if country == c else 0.0 for c in COUNTRIES),
        *inputs["history"],
    ]


def disagrees(request_id: str, seed: int, fraction: float) -> bool:
    """Whether this request's live answer is made to differ (deterministic, seed-keyed)."""
    digest = hashlib.blake2b(f"{seed}:{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


@dataclass(frozen=True)
class TrafficEvent:
    request_id: str
    inputs: dict[str, Any]
    segment: str
    shifted: bool
    disagree: bool


@dataclass
class TrafficSpec:
    model: str = "fraud-scorer"
    seed: int = 0
    disagree: float = 0.0
    shift_at_index: int | None = None
    """Requests from this index on come from the shifted input distribution."""

    def event(self, i: int) -> TrafficEvent:
        """The i-th request: a pure function of (seed, i, shift)."""
        rng = np.random.default_rng([self.seed, i])
        shifted = self.shift_at_index is not None and i >= self.shift_at_index
        amount = float(rng.lognormal(4.5 if shifted else 3.5, 1.0))
        country = COUNTRIES[int(rng.choice(3, p=[0.2, 0.2, 0.6] if shifted else [0.45, 0.35, 0.2]))]
        inputs = {
            "amount": round(amount, 2),
            "hour": int(rng.integers(0, 24)),
            "country": country,
            "history": [round(float(v), 4) for v in rng.random(3)],
        }
        rid = f"{self.model}-{self.seed}-{i:09d}"
        segment = "us" if country == "US" else "eu"
        return TrafficEvent(rid, inputs, segment, shifted, disagrees(rid, self.seed, self.disagree))


@dataclass
class TrafficStats:
    sent: int = 0
    disagreed: int = 0
    shifted: int = 0
    first_shifted_index: int | None = None
    seconds: float = 0.0
    truth: list[tuple[str, bool, bool]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


class TrafficService:
    """Answers requests with the live model and mirrors each one."""

    def __init__(self, publisher: Publisher, spec: TrafficSpec, model: nn.Module | None = None,
                 keep_truth: bool = False) -> None:
        self.publisher = publisher
        self.spec = spec
        # The live model is shadow.sim.traffic:build_model whatever the seed: the seed draws
        # the requests, and a worker given the live model's factory then agrees with it.
        self.model = model or build_model(0)
        self.stats = TrafficStats()
        self.keep_truth = keep_truth

    def answer(self, events: list[TrafficEvent], now_ms: int | None = None) -> None:
        """Run the model on a batch of requests and mirror each request with its answer."""
        if not events:
            return
        t0 = time.perf_counter()
        with torch.inference_mode():
            probs = self.model(torch.tensor([featurize(e.inputs) for e in events])).tolist()
        per_request_ms = (time.perf_counter() - t0) * 1000 / len(events)
        ts = now_ms if now_ms is not None else time.time_ns() // 1_000_000
        for e, p in zip(events, probs, strict=True):
            answer = [round(v, 6) for v in p]
            if e.disagree:
                answer.reverse()  # the live answer's top class differs from the model's
            self.publisher.publish(e.request_id, e.inputs, answer, latency_ms=per_request_ms,
                                   ts=ts, segment=e.segment)
            self._count(e)

    def _count(self, e: TrafficEvent) -> None:
        s = self.stats
        s.sent += 1
        s.disagreed += e.disagree
        s.shifted += e.shifted
        if e.shifted and s.first_shifted_index is None:
            s.first_shifted_index = s.sent - 1
        if self.keep_truth:
            s.truth.append((e.request_id, e.disagree, e.shifted))

    def run(self, rate: float, duration_s: float, shift_at_s: float | None = None,
            on_tick: Callable[[TrafficStats], None] | None = None, tick_s: float = 0.01) -> None:
        """Send ``rate`` requests per second for ``duration_s`` seconds, paced by the clock."""
        total = int(rate * duration_s)
        start = time.monotonic()
        last_report = start
        for batch in self._batches(total, rate, start, shift_at_s, tick_s):
            self.answer(batch)
            now = time.monotonic()
            self.stats.seconds = now - start
            if on_tick and now - last_report >= 1.0:
                on_tick(self.stats)
                last_report = now
        self.stats.seconds = time.monotonic() - start

    def _batches(self, total: int, rate: float, start: float, shift_at_s: float | None,
                 tick_s: float) -> Iterator[list[TrafficEvent]]:
        i = 0
        while i < total:
            elapsed = time.monotonic() - start
            due = min(total, int(elapsed * rate) + 1)
            if due <= i:
                time.sleep(min(tick_s, (i + 1 - elapsed * rate) / rate))
                continue
            shift_due = shift_at_s is not None and elapsed >= shift_at_s
            if shift_due and self.spec.shift_at_index is None:
                self.spec.shift_at_index = i
            yield [self.spec.event(j) for j in range(i, due)]
            i = due
