"""A small JSON service for trying JSON answers: a shipping quote for a parcel.

The answer is a document: ``{"price": 12.34, "service": "parcel", "eta_days": 3,
"quote_nonce": 812345}``. ``quote_nonce`` is drawn at random for every answer, as ids and
timestamps are in real services: it differs between any two answers, and belongs on the
tolerances' ignore list (``TOLERANCES``). ``build_quotes`` is the live model;
``build_quotes_same`` its weights with its own nonces; ``build_quotes_retrained`` sends
parcels over 20 kg by freight (the live model: over 30 kg), so ``$.service`` differs on
about a quarter of the requests.

Loadable as ``shadow.sim.quotes:build_quotes`` (and the others), with ``MODEL_CARD``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["MODEL_CARD", "TOLERANCES", "QuoteModel", "build_quotes", "build_quotes_retrained",
           "build_quotes_same", "requests"]

SERVICES = ["parcel", "express", "freight"]
MODEL_CARD: dict[str, Any] = {
    "features": [
        {"field": "weight_kg", "scale": 1 / 40},
        {"field": "distance_km", "scale": 1 / 2000},
        {"field": "speed", "one_hot": ["standard", "express"]},
    ],
    "output": "json",
    "fields": [
        {"name": "price", "digits": 2},
        {"name": "service", "labels": SERVICES},
        {"name": "eta_days", "digits": 0},
        {"name": "quote_nonce", "digits": 0},
    ],
}

TOLERANCES = """\
[models.shipping-quote]
ignore = ["$.quote_nonce"]   # a fresh id in every answer: expected to differ
rtol = 0.01
"""
"""The tolerance the demo and the tests judge this model's answers with."""


class QuoteModel(nn.Module):
    """Features (weight / 40, distance / 2000, standard, express) to (price, three service
    scores, days, nonce)."""

    def __init__(self, freight_over_kg: float = 30.0, seed: int = 0) -> None:
        super().__init__()
        self.price = nn.Parameter(torch.tensor([30.0, 20.0, 0.0, 10.0]), requires_grad=False)
        self.freight_over = nn.Parameter(torch.tensor(freight_over_kg / 40),
                                         requires_grad=False)
        self.seed = seed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, distance, express = x[:, 0], x[:, 1], x[:, 3]
        price = 4.0 + x @ self.price
        parcel = torch.zeros_like(weight)
        fast = 10.0 * express - 5.0
        freight = 80.0 * (weight - self.freight_over)
        days = (1.0 + 5.0 * distance - express).clamp(min=1.0)
        nonce = torch.tensor([self._nonce(row) for row in x], dtype=torch.float32)
        return torch.stack([price, parcel, fast, freight, days, nonce], dim=1)

    def _nonce(self, row: torch.Tensor) -> float:
        # Random for each answer, yet the same for one copy and one request: replays repeat.
        digest = hashlib.blake2b(row.numpy().tobytes(), digest_size=8,
                                 salt=self.seed.to_bytes(8, "little")).digest()
        seed = int.from_bytes(digest, "little")
        return float(np.random.default_rng(seed).integers(100_000, 1_000_000))


def build_quotes() -> QuoteModel:
    """The live model."""
    return QuoteModel(seed=0).eval()


def build_quotes_control() -> QuoteModel:
    """A second copy of the live model: the control."""
    return QuoteModel(seed=1).eval()


def build_quotes_same() -> QuoteModel:
    """A candidate with the live model's weights (only its nonces differ)."""
    return QuoteModel(seed=2).eval()


def build_quotes_retrained() -> QuoteModel:
    """A candidate that sends parcels over 20 kg by freight."""
    return QuoteModel(freight_over_kg=20.0, seed=3).eval()


@dataclass(frozen=True)
class QuoteRequest:
    request_id: str
    inputs: dict[str, Any]
    segment: str


def requests(seed: int = 0, model: str = "shipping-quote") -> Iterator[QuoteRequest]:
    """Quote requests, endless: a pure function of the seed and the index."""
    i = 0
    while True:
        rng = np.random.default_rng([seed, i])
        speed = "express" if rng.random() < 0.3 else "standard"
        inputs = {"weight_kg": round(float(rng.uniform(0.2, 40.0)), 1),
                  "distance_km": int(rng.integers(5, 2000)), "speed": speed}
        yield QuoteRequest(f"{model}-{seed}-{i:09d}", inputs, speed)
        i += 1
